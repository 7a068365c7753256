package configs

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// twoVoters is twoNodes with a failover block in each node: alpha's
// address on line 7 and option on line 8, bravo's on lines 16 and 17. The
// resource's body continues at line 20 column 3 with extra.
func twoVoters(alphaAddr, alphaOpt, bravoAddr, bravoOpt, extra string) string {
	return fmt.Sprintf(`resource "r0" {
  node "alpha" {
    id      = 0
    address = "10.0.0.1:7789"
    disk    = "/dev/a"
    failover {
      %s
      %s
    }
  }
  node "bravo" {
    id      = 1
    address = "10.0.0.2:7789"
    disk    = "/dev/b"
    failover {
      %s
      %s
    }
  }
  %s
%s}
`, alphaAddr, alphaOpt, bravoAddr, bravoOpt, extra, testTLS)
}

// autoBlock is a failover block with mode = "auto" on its first line (line
// 21 in twoVoters, the value at column 12) and lines after it (22, ...).
func autoBlock(lines ...string) string {
	return "failover {\n    mode = \"auto\"\n    " + strings.Join(lines, "\n    ") + "\n  }"
}

const (
	alphaVoter = `address = "10.0.0.1:7790"`
	bravoVoter = `address = "10.0.0.2:7790"`
	witness    = `witness "w" { address = "10.0.0.3:7790" }`
)

func TestFailoverManual(t *testing.T) {
	cfg, err := Parse("r0.hcl", []byte(withTwoNodes(`failover { mode = "manual" }`)), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := cfg.Resources[0].Failover
	if f.Mode != FailoverManual || f.DetectionTimeout != 5*time.Second || f.PromoteConsistent || f.Witnesses != nil {
		t.Errorf("failover %+v", f)
	}
	if got := where(f.DeclRange); got != "r0.hcl:12:3" {
		t.Errorf("failover block at %s, want r0.hcl:12:3", got)
	}
}

func TestFailoverErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		want []string
	}{
		{"bad mode", withTwoNodes(`failover { mode = "Auto" }`), []string{"r0.hcl:12:21:", "Invalid failover mode", `did you mean "auto"?`, `"manual", "auto"`}},
		{"duplicate block", withTwoNodes("failover {}\n  failover {}"), []string{"r0.hcl:13:3:", "Duplicate failover block", "r0.hcl:12:3"}},
		{"unknown setting", withTwoNodes(`failover { detection_timout = "5s" }`), []string{"r0.hcl:12:14:", "Unsupported argument", `Did you mean "detection_timeout"?`}},
		{"setting without auto", withTwoNodes(`failover { detection_timeout = "10s" }`), []string{"r0.hcl:12:14:", "Setting without automatic failover", `mode = "auto"`}},
		{"witness without auto", withTwoNodes("failover {\n    " + witness + "\n  }"), []string{"r0.hcl:13:5:", "Setting without automatic failover"}},
		{"node block without auto", twoVoters(alphaVoter, "", bravoVoter, "", ""), []string{"r0.hcl:6:5:", "r0.hcl:15:5:", "Setting without automatic failover"}},
		{"detection timeout too short", twoVoters(alphaVoter, "", bravoVoter, "", autoBlock(`detection_timeout = "100ms"`, witness)), []string{"r0.hcl:22:25:", "Invalid detection_timeout", "from 500ms to 10m0s"}},
		{"priority too high", twoVoters(alphaVoter, "priority = 5000", bravoVoter, "", autoBlock(witness)), []string{"r0.hcl:8:18:", "Invalid priority", "from 0 to 1000"}},
		{"auto_promote not a bool", twoVoters(alphaVoter, `auto_promote = "no"`, bravoVoter, "", autoBlock(witness)), []string{"r0.hcl:8:22:", "bool required"}},
		{"bad consensus address", twoVoters(`address = "10.0.0.1"`, "", bravoVoter, "", autoBlock(witness)), []string{"r0.hcl:7:17:", "Invalid address", "HOST:PORT"}},
		{"too few voters", twoVoters(alphaVoter, "", bravoVoter, "", autoBlock()), []string{"r0.hcl:20:3:", "Too few voters", "2 voter(s)", "witness"}},
		{"missing consensus address", twoVoters(alphaVoter, "", "", "", autoBlock(witness)), []string{"r0.hcl:15:5:", "Missing consensus address", `node "bravo"`}},
		{"node without failover block", withTwoNodes(`failover {
    mode = "auto"
  }`), []string{"r0.hcl:2:3:", "r0.hcl:7:3:", "Missing consensus address"}},
		{"witness named like a node", twoVoters(alphaVoter, "", bravoVoter, "", autoBlock(`witness "bravo" { address = "10.0.0.3:7790" }`)), []string{"r0.hcl:22:13:", "Duplicate name", `node "bravo" at r0.hcl:11:3`}},
		{"duplicate witness", twoVoters(alphaVoter, "", bravoVoter, "", autoBlock(witness, witness)), []string{"r0.hcl:23:13:", "Duplicate witness", "r0.hcl:22:5"}},
		{"witness without address", twoVoters(alphaVoter, "", bravoVoter, "", autoBlock(`witness "w" {}`)), []string{"r0.hcl:22:", `"address" is required`}},
		{"consensus address is a replication address", twoVoters(`address = "10.0.0.2:7789"`, "", bravoVoter, "", autoBlock(witness)), []string{"r0.hcl:6:5:", "Duplicate address", `replication address of node "bravo" at r0.hcl:11:3`}},
		{"two voters on one address", twoVoters(alphaVoter, "", bravoVoter, "", autoBlock(`witness "w" { address = "10.0.0.1:7790" }`)), []string{"r0.hcl:22:5:", "Duplicate address", `consensus address of node "alpha" at r0.hcl:6:5`}},
		{"no node to promote", twoVoters(alphaVoter, "auto_promote = false", bravoVoter, "auto_promote = false", autoBlock(witness)), []string{"r0.hcl:20:3:", "No node to promote", "auto_promote = false"}},
		{"node without a log directory", twoVoters(alphaVoter, `dir = "/var/lib/georepl/r0"`, bravoVoter, "", autoBlock(witness)), []string{"r0.hcl:15:5:", "Missing consensus log directory", `node "bravo"`}},
		{"relative log directory", twoVoters(alphaVoter, `dir = "r0"`, bravoVoter, "", autoBlock(witness)), []string{"r0.hcl:8:13:", "Invalid directory", "absolute"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("r0.hcl", []byte(tc.src), LoadOptions{})
			checkDiagnosticsError(t, cfg, err, tc.want)
		})
	}
}

func TestFailoverAuto(t *testing.T) {
	src := twoVoters(alphaVoter, `dir = "/var/lib/georepl/r0"`, bravoVoter, `dir = "/srv/failover"`,
		autoBlock(`detection_timeout = "2s"`, "promote_consistent = true", `witness "w" {
      address = "10.0.0.3:7790"
      dir     = "/var/lib/georepl/w"
    }`))
	cfg, err := Parse("r0.hcl", []byte(src), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	f := r.Failover
	if f.Mode != FailoverAuto || f.DetectionTimeout != 2*time.Second || !f.PromoteConsistent {
		t.Errorf("failover %+v", f)
	}
	if len(f.Witnesses) != 1 || f.Witnesses[0].Name != "w" || f.Witnesses[0].Address != "10.0.0.3:7790" || f.Witnesses[0].Dir != "/var/lib/georepl/w" {
		t.Errorf("witnesses %+v", f.Witnesses)
	}
	a, b := r.Nodes[0].Failover, r.Nodes[1].Failover
	if a.Address != "10.0.0.1:7790" || a.Dir != "/var/lib/georepl/r0" || !a.AutoPromote || b.Dir != "/srv/failover" {
		t.Errorf("node failover blocks %+v %+v", a, b)
	}
}

// TestFailoverWitnessQuorum: a witness counts as a node in quorum: two
// data nodes and a witness make "majority" 2 of 3, and 3 the most.
func TestFailoverWitnessQuorum(t *testing.T) {
	voters := func(quorum string) string {
		return twoVoters(alphaVoter, `dir = "/var/lib/georepl/r0"`, bravoVoter, `dir = "/var/lib/georepl/r0"`,
			"quorum = "+quorum+"\n  "+autoBlock(`witness "w" {
      address = "10.0.0.3:7790"
      dir     = "/var/lib/georepl/w"
    }`))
	}
	for _, tc := range []struct{ quorum, want string }{{`"majority"`, "2"}, {`"3"`, "3"}} {
		cfg, err := Parse("r0.hcl", []byte(voters(tc.quorum)), LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(cfg.Resources[0].Quorum); got != tc.want {
			t.Errorf("quorum = %s: %s nodes, want %s", tc.quorum, got, tc.want)
		}
	}
	cfg, err := Parse("r0.hcl", []byte(voters(`"4"`)), LoadOptions{})
	checkDiagnosticsError(t, cfg, err, []string{"r0.hcl:20:", "Invalid quorum", "from 2 to 3", "3 nodes (1 of them witnesses)"})
}
