package failover

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// answeringFollower is a voter that answers raft's RPCs itself, on a
// TCPNetwork: it grants every vote and accepts appends, except while
// reject is set, when it answers an append with Success false (as a
// follower whose log diverged after a leader change does).
type answeringFollower struct {
	n      *TCPNetwork
	reject atomic.Bool
	stop   chan struct{}
	done   chan struct{}
}

func startAnsweringFollower(t *testing.T) *answeringFollower {
	t.Helper()
	n, err := ListenTCP("127.0.0.1:0", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &answeringFollower{n: n, stop: make(chan struct{}), done: make(chan struct{})}
	go f.serve()
	t.Cleanup(func() {
		close(f.stop)
		<-f.done
		n.Close()
	})
	return f
}

// leaderBeside starts a member that leads a group of two with f, and
// waits until it leads (f grants its votes).
func leaderBeside(t *testing.T, f *answeringFollower) *Member {
	t.Helper()
	n, err := ListenTCP("127.0.0.1:0", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Start(Config{ID: "a", Network: n, DetectionTimeout: 200 * time.Millisecond,
		Voters: []Voter{{ID: "a", Addr: n.Addr()}, {ID: "b", Addr: f.n.Addr()}}})
	if err != nil {
		t.Fatal(err)
	}
	for !m.IsLeader() {
		time.Sleep(10 * time.Millisecond)
	}
	return m
}

func (f *answeringFollower) serve() {
	defer close(f.done)
	var last uint64
	for {
		select {
		case <-f.stop:
			return
		case rpc := <-f.n.Transport().Consumer():
			switch req := rpc.Command.(type) {
			case *raft.RequestPreVoteRequest:
				rpc.Respond(&raft.RequestPreVoteResponse{Term: req.Term, Granted: true}, nil)
			case *raft.RequestVoteRequest:
				rpc.Respond(&raft.RequestVoteResponse{Term: req.Term, Granted: true}, nil)
			case *raft.AppendEntriesRequest:
				// A follower across a link slower than the leader's
				// proposals: appends overlap.
				time.Sleep(5 * time.Millisecond)
				if f.reject.Load() && len(req.Entries) > 0 {
					rpc.Respond(&raft.AppendEntriesResponse{Term: req.Term, LastLog: last}, nil)
					continue
				}
				if n := len(req.Entries); n > 0 {
					last = req.Entries[n-1].Index
				}
				rpc.Respond(&raft.AppendEntriesResponse{Term: req.Term, LastLog: last, Success: true}, nil)
			default:
				rpc.Respond(nil, errors.New("not served by this test"))
			}
		}
	}
}

// TestLeaderShutsDownAfterARejectedAppend: a leader whose follower
// rejects appends while entries keep coming shuts down. raft's pipelined
// replication deadlocks there: once a rejection ends its response decoder,
// the sender may still send, and it then waits forever on a transport
// channel that only its own exit would close, so Shutdown never returns
// (seen as a `georepl down` that hung on the consensus leader after a
// flapping link). The daemon's networks do not pipeline.
func TestLeaderShutsDownAfterARejectedAppend(t *testing.T) {
	for round := range 5 {
		f := startAnsweringFollower(t)
		m := leaderBeside(t, f)
		// Entries keep coming; the follower accepts them for a while,
		// then rejects them for a while.
		entry, err := json.Marshal(command{Op: opReport, Resource: "r0", Node: "a", Report: &Report{}})
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		proposed := make(chan struct{})
		go func() {
			defer close(proposed)
			for {
				select {
				case <-stop:
					return
				default:
				}
				m.raft.Apply(entry, 10*time.Millisecond) // not waited for: the follower may reject it
				time.Sleep(time.Millisecond)
			}
		}()
		time.Sleep(300 * time.Millisecond)
		f.reject.Store(true)
		time.Sleep(300 * time.Millisecond)
		close(stop)
		<-proposed

		closed := make(chan error, 1)
		go func() { closed <- m.Close() }()
		select {
		case <-closed:
		case <-time.After(time.Minute):
			t.Fatalf("round %d: the leader's Close has not returned after a minute (replication deadlocked)", round)
		}
	}
}

// TestReportEndsWithItsContext: a proposal the followers never accept
// (the leader keeps its majority's contact, so raft neither commits nor
// fails it) returns when its context ends: the failover loop's report
// waits at most a lease, and closing the loop waits for it.
func TestReportEndsWithItsContext(t *testing.T) {
	f := startAnsweringFollower(t)
	m := leaderBeside(t, f)
	defer m.Close()
	f.reject.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := m.Report(ctx, "r0", "a", Report{})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Report of an entry never committed: %v, want its context's deadline", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Report of an entry never committed has not returned a minute after its context ended")
	}
}
