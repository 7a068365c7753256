package configs

import "embed"

// Examples holds the example configuration files, examples/*.hcl. Together
// they form one valid configuration directory; each file is commented and
// is a good starting point for a new resource. The CLI prints them, and the
// package tests check that they load.
//
//go:embed examples/*.hcl
var Examples embed.FS
