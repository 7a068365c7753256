// Package configs loads, validates and defaults georepl's HCL resource files.
//
// A configuration directory holds any number of *.hcl files, the same set on
// every node. Each file declares resources; a resource lists the nodes that
// hold a copy of it and how they talk to each other:
//
//	resource "r0" {
//	  protocol = "C"            # default for every connection
//	  net { transport = "tcp" } # default network settings
//	  tls {                     # every connection runs TLS, verified
//	    ca   = "/etc/georepl/tls/ca.crt"
//	    cert = "/etc/georepl/tls/node.crt"
//	    key  = "/etc/georepl/tls/node.key"
//	  }
//	  node "alpha" {
//	    id      = 0
//	    address = "10.0.0.1:7789"
//	    disk    = "/dev/vg0/r0"
//	  }
//	  node "dr" {
//	    id      = 1
//	    address = "192.0.2.10:7789"
//	    disk    = "/srv/georepl/r0.img"
//	  }
//	  connection "alpha" "dr" { # overrides for one pair of nodes
//	    protocol = "A"
//	  }
//	}
//
// A top-level plugin block (see Plugin) adds a transport that a plugin
// binary provides; net.transport names it like a built-in.
//
// Every pair of nodes is connected (a full mesh), and every connection must
// be authenticated, by TLS or a shared secret, unless its net block says
// insecure = true. A connection block changes
// only the fields it sets, for its pair, in both directions. The admin guide
// (docs/admin-guide.md, "Configuration reference") describes every field and
// its default; Examples holds commented example files.
//
// # Loading
//
// LoadDir reads a directory, Parse a single file's source. Both return a
// *Config that is complete: every default filled in, every name, number,
// size, duration and reference checked. Use it read-only:
//
//	cfg, err := configs.LoadDir("/etc/georepl", configs.LoadOptions{
//		Transports: transports.Names(), // the built-ins; plugin blocks add theirs
//	})
//	if err != nil {
//		return err // lists every problem as FILE:LINE:COLUMN: Summary; detail
//	}
//	r, err := cfg.Resource("r0")
//	me, err := r.Node(hostname)
//	for _, peer := range r.Peers(me.Name) {
//		link, _ := r.Link(me.Name, peer.Name) // effective protocol and net settings
//		dial(peer.Address, link)
//	}
//
// # Errors
//
// Mistakes in the files come back as one *DiagnosticsError holding every
// problem found, not just the first, each pointing at the offending text. It
// unwraps to hcl.Diagnostics; a CLI can render those with source snippets
// using hcl.NewDiagnosticTextWriter and DiagnosticsError.Files. On error no
// partial Config is returned.
//
// # Sizes
//
// Sizes such as max_buffer and block_size are strings like "64MiB" or
// numbers of bytes. ParseSize and FormatSize convert between the two for
// the CLI; all units are powers of 1024.
//
// Settings with a fixed set of values come out typed, in the types of the
// I/O-free packages that give them their meaning (protocols.Protocol,
// wire.Csum, core.Congestion, ...): their String methods are the spellings
// the files use, and their lists of values (protocols.All, wire.Csums,
// core.Congestions, ...) are what the decoder accepts. Transports are
// checked by name: the caller passes the transport names it supports.
package configs
