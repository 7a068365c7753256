# r0: one volume replicated to three nodes.
#
# alpha and bravo sit in the same room and replicate synchronously
# (protocol C): a write completes only when both disks have it, so losing
# either node loses nothing. dr is a disaster-recovery site far away: its
# connections are asynchronous (protocol A), compressed, and run over QUIC,
# so the WAN's latency never slows the application down. dr is always a
# crash-consistent, slightly older copy.
#
# The same file goes, unchanged, on all three nodes.

resource "r0" {
  # Default for every connection; connection blocks below override it.
  protocol = "C"

  # With three nodes, a Primary cut off from both others could stop
  # completing writes rather than risk a split brain (see "Quorum"):
  # quorum       = "majority"
  # on_no_quorum = "suspend-io"

  # Default network settings for every connection.
  net {
    transport     = "tcp"
    compression   = "none"
    shared_secret = "change-me" # use a long random string; empty disables authentication
    max_buffer    = "64MiB"     # unacknowledged data allowed per peer
    on_congestion = "block"     # what to do when max_buffer is full
    resync_rate   = "0"         # bytes per second a resync may use; "0": no cap
    resync_min_app_share = 0.3  # share of a busy link a resync leaves to writes
    ping_interval = "10s"
    timeout       = "6s"
    connect_retry = "1s"
    after_split_brain = "disconnect" # two Primaries that wrote apart: stay apart until the operator decides
  }

  disk {
    block_size  = "4KiB"   # bitmap granularity: resync works in units of this size
    flushes     = false    # true: secondaries also flush at every epoch boundary (slow)
    al_extents  = 1024     # activity log: 4 MiB extents resynchronised after a crash
    on_io_error = "detach" # a failing disk is detached and reads go to a peer; "pass-on": the application gets EIO
    resync_undo_size = "8GiB" # per node with resync_undo: old blocks saved during one resync
  }

  node "alpha" {
    id        = 0
    address   = "10.0.0.1:7789"
    disk      = "/dev/vg0/r0"
    meta_disk = "internal"
    export    = "unix:/run/georepl/r0.sock"
  }

  node "bravo" {
    id        = 1
    address   = "10.0.0.2:7789"
    disk      = "/dev/vg0/r0"
    meta_disk = "internal"
    export    = "unix:/run/georepl/r0.sock"
  }

  node "dr" {
    id        = 2
    address   = "192.0.2.10:7789"
    disk      = "/srv/georepl/r0.img" # a regular file works as well as a block device
    meta_disk = "/srv/georepl/r0.meta"
    # stays a consistent image while it catches up (see the admin guide)
    resync_undo = "/srv/georepl/r0.undo"
  }

  # Both connections to the remote site: asynchronous, compressed, over QUIC,
  # with a larger buffer to ride out WAN hiccups. When even that is full,
  # stop sending and resynchronise dr later rather than block the application.
  connection "alpha" "dr" {
    protocol = "A"
    net {
      transport     = "quic"
      compression   = "lz4"
      max_buffer    = "1GiB"
      on_congestion = "pull-ahead"
      timeout       = "30s"
    }
  }

  connection "dr" "bravo" { # the order of the two names does not matter
    protocol = "A"
    net {
      transport     = "quic"
      compression   = "lz4"
      max_buffer    = "1GiB"
      on_congestion = "pull-ahead"
      timeout       = "30s"
    }
  }
}
