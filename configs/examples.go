package configs

import "embed"

// Examples holds the example configuration files, examples/*.hcl. Together
// they form one valid configuration directory; each file is commented and
// is a good starting point for a new resource. The package tests check that
// they load, and that docs/admin-guide.md shows r0.hcl verbatim.
//
//go:embed examples/*.hcl
var Examples embed.FS
