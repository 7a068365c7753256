# r1: the smallest useful resource. Two nodes, every setting at its default:
# protocol C over plain TCP, no compression, no authentication.
#
# Without shared_secret, any host that can reach the port and knows the
# resource and node names may connect: only do this on a trusted network.

resource "r1" {
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
