package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// benchPair is a resource r0 of two nodes, alpha in the first namespace of
// a benchNet and bravo in the second, whose daemons run for one
// benchmark run.
type benchPair struct {
	bin, dir string
	// procs are the daemons, alpha's first.
	procs []*exec.Cmd
	logs  []*os.File
}

// startPair writes r0 into dir/conf with settings (HCL inside the resource
// block, before its nodes) and the nodes' disks, creates their metadata,
// starts both daemons in their namespaces (logs in dir/NAME.log) and waits
// until alpha is connected to bravo. On success the caller stops the pair.
func startPair(bin, dir string, net *benchNet, settings string, disks [2]string) (*benchPair, error) {
	conf := filepath.Join(dir, "conf")
	if err := os.MkdirAll(conf, 0o755); err != nil {
		return nil, err
	}
	port := 20000 + rand.IntN(30000) // the namespaces are the benchmark's own
	names := [2]string{"alpha", "bravo"}
	var hcl strings.Builder
	fmt.Fprintf(&hcl, "resource \"r0\" {\n%s", settings)
	for i, name := range names {
		fmt.Fprintf(&hcl, "  node %q {\n    id = %d\n    address = \"%s:%d\"\n    disk = %q\n    export = \"unix:%s\"\n  }\n",
			name, i, net.addr[i], port, disks[i], filepath.Join(dir, name+".nbd"))
	}
	hcl.WriteString("}\n")
	if err := os.WriteFile(filepath.Join(conf, "r0.hcl"), []byte(hcl.String()), 0o644); err != nil {
		return nil, err
	}
	p := &benchPair{bin: bin, dir: dir}
	for i, name := range names {
		if out, err := exec.Command(bin, "create-md", "--force", "--config", conf, "--node", name, "r0").CombinedOutput(); err != nil {
			p.stop()
			return nil, fmt.Errorf("create-md %s: %v: %s", name, err, out)
		}
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			p.stop()
			return nil, err
		}
		p.logs = append(p.logs, logf)
		cmd := exec.Command("ip", "netns", "exec", net.ns[i], bin, "daemon", "--config", conf, "--node", name,
			"--admin", p.admin(name), "--up", "--log-level", "warn")
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			p.stop()
			return nil, err
		}
		p.procs = append(p.procs, cmd)
		if err := waitSocket(p.admin(name)); err != nil {
			p.stop()
			return nil, err
		}
	}
	if err := waitConnected(bin, p.admin("alpha"), 1); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// admin is the admin socket of node name.
func (p *benchPair) admin(name string) string { return filepath.Join(p.dir, name+".admin") }

// cli runs a georepl command against node name's daemon.
func (p *benchPair) cli(name string, args ...string) ([]byte, error) {
	out, err := exec.Command(p.bin, append([]string{"--admin", p.admin(name)}, args...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("georepl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// stop stops the daemons and closes their logs.
func (p *benchPair) stop() {
	for _, cmd := range p.procs {
		stop(cmd)
	}
	for _, f := range p.logs {
		f.Close()
	}
}
