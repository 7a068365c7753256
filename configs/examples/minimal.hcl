# r1: the smallest useful resource. Two nodes, every setting at its default
# but the secret: protocol C over plain TCP, no compression.
#
# The shared secret authenticates the nodes to each other; the data
# crosses the network in plain text. Across a network you do not own, add
# a tls block (see r0.hcl and `georepl tls init`).

resource "r1" {
  net {
    shared_secret = "change-me" # a long random string
  }

  node "alpha" {
    id      = 0
    address = "10.0.0.1:7790" # one port per resource
    disk    = "/dev/vg0/r1"
  }

  node "bravo" {
    id      = 1
    address = "10.0.0.2:7790"
    disk    = "/dev/vg0/r1"
  }
}
