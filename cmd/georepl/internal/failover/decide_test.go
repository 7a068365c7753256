package failover

import (
	"strings"
	"testing"

	"github.com/georepl/georepl/core"
)

func TestDecide(t *testing.T) {
	const gen = 0xabc
	holder := Promotion{Resource: "r0", Node: "alpha", Term: 3}
	lostPrimary := Candidate{Node: "alpha", AutoPromote: true, Role: core.Primary, Disk: core.UpToDate, Current: gen}
	secondary := func(name string, prio int, disk core.DiskState, cur uint64) Candidate {
		return Candidate{Node: name, AutoPromote: true, Priority: prio, Fresh: true, Role: core.Secondary, Disk: disk, Current: cur}
	}
	tests := []struct {
		name      string
		s         Situation
		want      string // node promoted, "" for none
		reasonHas string
	}{
		{
			name:      "no promotion in the log: the first Primary is the operator's",
			s:         Situation{Candidates: []Candidate{secondary("beta", 1, core.UpToDate, gen)}},
			reasonHas: "operator's",
		},
		{
			name: "the holder reports in time: nothing happens",
			s: Situation{Holder: holder, HolderGen: gen, Candidates: []Candidate{
				{Node: "alpha", Fresh: true, AutoPromote: true, Role: core.Primary, Disk: core.UpToDate, Current: gen},
				secondary("beta", 9, core.UpToDate, gen)}},
			reasonHas: "reports in time",
		},
		{
			name: "the holder reports in time as Secondary: a demotion is the operator's",
			s: Situation{Holder: holder, HolderGen: gen, Candidates: []Candidate{
				{Node: "alpha", Fresh: true, AutoPromote: true, Role: core.Secondary, Disk: core.UpToDate, Current: gen},
				secondary("beta", 9, core.UpToDate, gen)}},
			reasonHas: "reports in time",
		},
		{
			name: "another node reports being Primary: never a third",
			s: Situation{Holder: holder, HolderGen: gen, Candidates: []Candidate{lostPrimary,
				{Node: "beta", Fresh: true, AutoPromote: true, Role: core.Primary, Disk: core.UpToDate, Current: gen},
				secondary("gamma", 1, core.UpToDate, gen)}},
			reasonHas: "operator must demote",
		},
		{
			name: "lost Primary: the UpToDate node of its generation is promoted after its term",
			s: Situation{Holder: holder, HolderGen: gen, Candidates: []Candidate{lostPrimary,
				secondary("beta", 1, core.UpToDate, gen)}},
			want: "beta",
		},
		{
			name: "highest priority wins among qualifying nodes",
			s: Situation{Holder: holder, HolderGen: gen, Candidates: []Candidate{lostPrimary,
				secondary("beta", 1, core.UpToDate, gen), secondary("gamma", 5, core.UpToDate, gen)}},
			want: "gamma",
		},
		{
			name: "equal priorities: the lowest name, so every member decides alike",
			s: Situation{Holder: holder, HolderGen: gen, Candidates: []Candidate{lostPrimary,
				secondary("gamma", 1, core.UpToDate, gen), secondary("beta", 1, core.UpToDate, gen)}},
			want: "beta",
		},
		{
			name: "a higher priority in an older generation loses to the node that had every write",
			s: Situation{Holder: holder, HolderGen: gen, Candidates: []Candidate{lostPrimary,
				secondary("beta", 1, core.UpToDate, gen), secondary("gamma", 9, core.UpToDate, gen-1)}},
			want: "beta",
		},
		{
			name: "UpToDate in the generation the lost Primary started after the one in the log (never leased: nothing acknowledged in it)",
			s: Situation{Holder: holder, HolderGen: gen, Candidates: []Candidate{lostPrimary,
				{Node: "beta", AutoPromote: true, Fresh: true, Role: core.Secondary, Disk: core.UpToDate, Current: gen + 1, Previous: gen}}},
			want: "beta",
		},
		{
			name: "UpToDate only in an older generation: it stopped receiving writes, wait for the operator",
			s: Situation{Holder: holder, HolderGen: gen, Candidates: []Candidate{lostPrimary,
				secondary("beta", 1, core.UpToDate, gen-1)}},
			reasonHas: "waiting for the operator",
		},
		{
			name: "the lost Primary's generation is unknown: nothing qualifies",
			s: Situation{Holder: holder, Candidates: []Candidate{lostPrimary,
				secondary("beta", 1, core.UpToDate, gen)}},
			reasonHas: "waiting for the operator",
		},
		{
			name: "a DR node (auto_promote = false) is never promoted automatically",
			s: Situation{Holder: holder, HolderGen: gen, PromoteConsistent: true, Candidates: []Candidate{lostPrimary,
				{Node: "dr", Fresh: true, Role: core.Secondary, Disk: core.UpToDate, Current: gen, Priority: 9}}},
			reasonHas: "no node with auto_promote",
		},
		{
			name: "a witness is never promoted",
			s: Situation{Holder: holder, HolderGen: gen, Candidates: []Candidate{lostPrimary,
				{Node: "w", Witness: true, AutoPromote: true, Fresh: true, Role: core.Secondary, Disk: core.UpToDate, Current: gen}}},
			reasonHas: "waiting for the operator",
		},
		{
			name: "a node that did not report in time is not promoted",
			s: Situation{Holder: holder, HolderGen: gen, Candidates: []Candidate{lostPrimary,
				{Node: "beta", AutoPromote: true, Role: core.Secondary, Disk: core.UpToDate, Current: gen}}},
			reasonHas: "waiting for the operator",
		},
		{
			name: "Inconsistent (a sync target) is never promoted, even by policy",
			s: Situation{Holder: holder, HolderGen: gen, PromoteConsistent: true, Candidates: []Candidate{lostPrimary,
				secondary("beta", 1, core.Inconsistent, gen)}},
			reasonHas: "no node with auto_promote has a consistent copy",
		},
		{
			name: "Outdated is not promoted by default",
			s: Situation{Holder: holder, HolderGen: gen, Candidates: []Candidate{lostPrimary,
				secondary("beta", 1, core.Outdated, gen)}},
			reasonHas: "waiting for the operator",
		},
		{
			name: "by policy the best consistent copy: Consistent before Outdated at equal priority",
			s: Situation{Holder: holder, HolderGen: gen, PromoteConsistent: true, Candidates: []Candidate{lostPrimary,
				secondary("beta", 1, core.Outdated, gen), secondary("gamma", 1, core.Consistent, gen)}},
			want: "gamma",
		},
		{
			name: "by policy, a qualifying UpToDate node still comes first",
			s: Situation{Holder: holder, HolderGen: gen, PromoteConsistent: true, Candidates: []Candidate{lostPrimary,
				secondary("beta", 1, core.UpToDate, gen), secondary("gamma", 9, core.Consistent, gen)}},
			want: "beta",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(tt.s)
			if d.Node != tt.want {
				t.Fatalf("Decide promoted %q, want %q (reason: %s)", d.Node, tt.want, d.Reason)
			}
			if d.Node != "" && d.After != tt.s.Holder.Term {
				t.Errorf("Decide proposes after term %d, the log is at %d", d.After, tt.s.Holder.Term)
			}
			if !strings.Contains(d.Reason, tt.reasonHas) {
				t.Errorf("reason %q does not say %q", d.Reason, tt.reasonHas)
			}
		})
	}
}
