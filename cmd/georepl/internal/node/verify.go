package node

import (
	"fmt"
	"strings"

	"github.com/georepl/georepl/core"
)

// Verify is the progress and result of online verify with one peer, as
// status shows it.
type Verify struct {
	Running    bool    `json:"running"`
	Percent    float64 `json:"percent"`
	DoneBytes  uint64  `json:"done_bytes"`
	TotalBytes uint64  `json:"total_bytes"`
	// OutOfSyncBytes and Ranges are what differs (Ranges: the first
	// core.MaxVerifyRanges, adjacent blocks merged; MoreRanges: there are
	// more).
	OutOfSyncBytes uint64        `json:"out_of_sync_bytes"`
	Ranges         []VerifyRange `json:"ranges"`
	MoreRanges     bool          `json:"more_ranges,omitempty"`
	// Stopped says why the verify ended before the end of the device.
	Stopped string `json:"stopped,omitempty"`
}

// VerifyRange is a byte range found different.
type VerifyRange struct {
	Offset uint64 `json:"offset"`
	Length uint64 `json:"length"`
}

func verifyStatus(v *core.VerifyStatus) *Verify {
	if v == nil {
		return nil
	}
	out := &Verify{Running: v.Running, DoneBytes: v.Done, TotalBytes: v.Total, OutOfSyncBytes: v.OutOfSync,
		Ranges: []VerifyRange{}, MoreRanges: v.More, Stopped: v.Stopped}
	if v.Total > 0 {
		out.Percent = 100 * float64(v.Done) / float64(v.Total)
	}
	for _, r := range v.Ranges {
		out.Ranges = append(out.Ranges, VerifyRange{Offset: r.Offset, Length: r.Length})
	}
	return out
}

// Summary describes the verify on one line for people.
func (v *Verify) Summary() string {
	var b strings.Builder
	switch {
	case v.Running:
		fmt.Fprintf(&b, "running %.1f%%", v.Percent)
	case v.Stopped != "":
		fmt.Fprintf(&b, "stopped at %.1f%% (%s)", v.Percent, v.Stopped)
	default:
		b.WriteString("done")
	}
	if v.OutOfSyncBytes == 0 {
		b.WriteString(", no block out of sync")
		return b.String()
	}
	fmt.Fprintf(&b, ", %s out of sync in", HumanBytes(v.OutOfSyncBytes))
	for _, r := range v.Ranges {
		fmt.Fprintf(&b, " [%d, +%d)", r.Offset, r.Length)
	}
	if v.MoreRanges {
		b.WriteString(" ...")
	}
	return b.String()
}

// Verify starts online verify with peerName (every connected peer in sync
// when empty). The engine refuses, saying why, unless this node is Primary
// and Established with the peer.
func (r *resource) Verify(peerName string) error {
	return r.call(func() error {
		var targets []*peer
		if peerName != "" {
			ps, err := r.peersNamed(peerName)
			if err != nil {
				return err
			}
			targets = ps
		} else {
			for _, ps := range r.engine.Status().Peers {
				if ps.Conn == core.Connected && ps.Repl == core.Established {
					targets = append(targets, r.peers[ps.ID])
				}
			}
			if len(targets) == 0 {
				return fmt.Errorf("cannot verify %s on %s: %w: no peer is connected and in sync", r.cfg.Name, r.self.Name, core.ErrWrongState)
			}
		}
		var err error
		for _, p := range targets {
			if err = r.engine.StartVerify(p.id); err != nil {
				err = fmt.Errorf("cannot verify %s with %s: %w", r.cfg.Name, p.node.Name, err)
				break
			}
		}
		r.process()
		r.publishStatus()
		if err != nil {
			return err
		}
		return r.failed
	})
}
