// Package top is `georepl top`: a view of every resource and peer of a
// daemon, refreshed every second from its admin socket, as a bubbletea
// program on a terminal and as plain lines elsewhere. The model knows
// nothing of the socket: it is given a Fetch and a Control function, so
// that its updates and views are tested without a daemon or a terminal.
package top

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/georepl/georepl/cmd/georepl/internal/node"
)

// Interval is how often the view asks the daemon for its status.
const Interval = time.Second

// Fetch returns the status of every resource (the admin verb status).
type Fetch func(ctx context.Context) ([]*node.ResourceStatus, error)

// Control runs an admin verb (pause-sync, resume-sync) on a resource's peer.
type Control func(ctx context.Context, verb, resource, peer string) error

// Model is the state of the view: the last status, the throughput computed
// from the two last ones, the selected peer row and the last message.
type Model struct {
	fetch   Fetch
	control Control

	sts   []*node.ResourceStatus
	at    time.Time
	err   error
	rates map[peerKey]rate
	prev  map[peerKey]counters
	// writeLat is each resource's mean application write latency since
	// the last status, prevApp the snapshots it came from.
	writeLat map[string]time.Duration
	prevApp  map[string]node.LatencySnapshot

	cursor int // index into rows()
	note   string
}

type peerKey struct{ resource, peer string }

type counters struct {
	sent, recv uint64
	ack        node.LatencySnapshot
}

// rate is a peer's throughput and mean write acknowledgement latency
// since the last status (ack 0: no write acknowledged in between).
type rate struct {
	tx, rx float64
	ack    time.Duration
}

// New returns the model of a view that fetches with fetch and pauses or
// resumes resyncs with control.
func New(fetch Fetch, control Control) Model {
	return Model{fetch: fetch, control: control, rates: map[peerKey]rate{}, prev: map[peerKey]counters{},
		writeLat: map[string]time.Duration{}, prevApp: map[string]node.LatencySnapshot{}}
}

// StatusMsg carries a status fetched at At.
type StatusMsg struct {
	Status []*node.ResourceStatus
	At     time.Time
	Err    error
}

// TickMsg asks for the next fetch.
type TickMsg time.Time

// ControlMsg reports the outcome of a pause or resume.
type ControlMsg struct {
	What string
	Err  error
}

func (m Model) fetchCmd() tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		sts, err := m.fetch(ctx)
		return StatusMsg{Status: sts, At: time.Now(), Err: err}
	}
}

// Init fetches at once.
func (m Model) Init() tea.Cmd { return m.fetchCmd() }

// Update handles a fetched status (and schedules the next fetch), a tick,
// a control's outcome and the keys: up/down (k/j) select a peer, p pauses
// and r resumes the resync to it, q quits.
func (m Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case StatusMsg:
		m = m.withStatus(msg)
		return m, tea.Tick(Interval, func(t time.Time) tea.Msg { return TickMsg(t) })
	case TickMsg:
		return m, m.fetchCmd()
	case ControlMsg:
		m.note = msg.What
		if msg.Err != nil {
			m.note = msg.Err.Error()
		}
		return m, m.fetchCmd()
	case tea.KeyMsg:
		switch msg.String() {
		case "q", "ctrl+c", "esc":
			return m, tea.Quit
		case "up", "k":
			if m.cursor > 0 {
				m.cursor--
			}
		case "down", "j":
			if m.cursor < len(m.rows())-1 {
				m.cursor++
			}
		case "p", "r":
			rows := m.rows()
			if len(rows) == 0 {
				return m, nil
			}
			k := rows[m.cursor]
			verb := "pause-sync"
			if msg.String() == "r" {
				verb = "resume-sync"
			}
			control := m.control
			return m, func() tea.Msg {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				err := control(ctx, verb, k.resource, k.peer)
				return ControlMsg{What: fmt.Sprintf("%s %s %s: done", verb, k.resource, k.peer), Err: err}
			}
		}
	}
	return m, nil
}

// withStatus keeps a fetched status and the throughput since the last.
func (m Model) withStatus(msg StatusMsg) Model {
	if msg.Err != nil {
		m.err = msg.Err
		return m
	}
	m.err = nil
	dt := msg.At.Sub(m.at).Seconds()
	rates := map[peerKey]rate{}
	prev := map[peerKey]counters{}
	writeLat := map[string]time.Duration{}
	prevApp := map[string]node.LatencySnapshot{}
	for _, r := range msg.Status {
		prevApp[r.Name] = r.AppWriteLatency
		if o, ok := m.prevApp[r.Name]; ok {
			writeLat[r.Name] = meanSince(o, r.AppWriteLatency)
		}
		for _, p := range r.Peers {
			k := peerKey{r.Name, p.Name}
			c := counters{p.BytesSent, p.BytesRecv, p.AckLatency}
			prev[k] = c
			// Counters restart with a connection: no rate across that.
			if o, ok := m.prev[k]; ok && dt > 0 && c.sent >= o.sent && c.recv >= o.recv {
				rates[k] = rate{float64(c.sent-o.sent) / dt, float64(c.recv-o.recv) / dt, meanSince(o.ack, c.ack)}
			}
		}
	}
	m.sts, m.at, m.rates, m.prev = msg.Status, msg.At, rates, prev
	m.writeLat, m.prevApp = writeLat, prevApp
	if n := len(m.rows()); m.cursor >= n {
		m.cursor = max(n-1, 0)
	}
	return m
}

// rows are the peers in the order shown.
func (m Model) rows() []peerKey {
	var rows []peerKey
	for _, r := range m.sts {
		for _, p := range r.Peers {
			rows = append(rows, peerKey{r.Name, p.Name})
		}
	}
	return rows
}

// View renders the status with the selected peer marked and the keys.
func (m Model) View() string {
	var b strings.Builder
	m.render(&b, true)
	b.WriteString("\n↑/↓ select a peer · p pause its resync · r resume · q quit\n")
	if m.note != "" {
		b.WriteString(m.note + "\n")
	}
	return b.String()
}

// Plain is the status as plain lines, for a pipe or a log.
func (m Model) Plain() string {
	var b strings.Builder
	m.render(&b, false)
	return b.String()
}

func (m Model) render(b *strings.Builder, selectable bool) {
	if m.err != nil {
		fmt.Fprintf(b, "error: %v\n", m.err)
	}
	if m.sts == nil {
		if m.err == nil {
			b.WriteString("waiting for the daemon's status...\n")
		}
		return
	}
	if len(m.sts) == 0 {
		b.WriteString("no resources\n")
	}
	row := 0
	for _, r := range m.sts {
		if !r.Up {
			fmt.Fprintf(b, "%s  down\n", r.Name)
		} else {
			fmt.Fprintf(b, "%s  %s  %s  %s", r.Name, r.Role, r.Disk, node.HumanBytes(r.Size))
			if r.Quorum != nil {
				fmt.Fprintf(b, "  quorum %d/%d", r.Quorum.Have, r.Quorum.Need)
			}
			if d := m.writeLat[r.Name]; d > 0 {
				fmt.Fprintf(b, "  write latency %s", ms(d))
			}
			b.WriteString("\n")
		}
		for _, p := range r.Peers {
			mark := "  "
			if selectable && row == m.cursor {
				mark = "> "
			}
			row++
			rt := m.rates[peerKey{r.Name, p.Name}]
			fmt.Fprintf(b, "%s%-10s %-12s %-14s %-9s %-13s %s %s  tx %s/s rx %s/s  out-of-sync %s",
				mark, p.Name, p.Conn, p.Repl, p.Role, p.Disk, p.Protocol, p.Transport,
				node.HumanBytes(uint64(rt.tx)), node.HumanBytes(uint64(rt.rx)), node.HumanBytes(p.OutOfSync))
			if rt.ack > 0 {
				fmt.Fprintf(b, "  ack %s", ms(rt.ack))
			}
			if p.RPO != nil {
				fmt.Fprintf(b, "  RPO %s %s", (time.Duration(p.RPO.AgeSeconds * float64(time.Second))).Round(time.Millisecond), node.HumanBytes(p.RPO.Bytes))
				if p.RPO.Exceeded {
					b.WriteString(" (beyond rpo_warning)")
				}
			}
			if p.Resync != nil {
				fmt.Fprintf(b, "  resync %s %5.1f%% %s/s ETA %s", bar(p.Resync.Percent, 20), p.Resync.Percent,
					node.HumanBytes(uint64(p.Resync.Rate)), eta(p.Resync.ETASeconds))
			}
			if p.ResyncPaused {
				b.WriteString("  (resync paused)")
			}
			b.WriteString("\n")
		}
	}
}

// meanSince is the mean latency of the observations between two snapshots
// of a histogram; 0 if there were none, or the histogram restarted.
func meanSince(before, now node.LatencySnapshot) time.Duration {
	if now.Count <= before.Count || now.Sum < before.Sum {
		return 0
	}
	return time.Duration((now.Sum - before.Sum) / float64(now.Count-before.Count) * float64(time.Second))
}

// ms prints a latency in milliseconds, with the precision it deserves.
func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.2fms", d.Seconds()*1000)
	}
	return d.Round(time.Millisecond).String()
}

// bar is a progress bar of width cells for pct percent.
func bar(pct float64, width int) string {
	n := int(pct / 100 * float64(width))
	n = min(max(n, 0), width)
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "]"
}

// eta is a duration in seconds as the status shows one; "?" before the
// rate is known.
func eta(s float64) string {
	if s <= 0 {
		return "?"
	}
	return (time.Duration(s) * time.Second).String()
}

// RunPlain prints the status every Interval as plain lines, a blank line
// between snapshots, until ctx ends or count snapshots (count > 0) are out.
func RunPlain(ctx context.Context, out io.Writer, fetch Fetch, count int) error {
	m := New(fetch, nil)
	for i := 0; count <= 0 || i < count; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(Interval):
			}
			fmt.Fprintln(out)
		}
		sts, err := fetch(ctx)
		if err != nil && ctx.Err() != nil {
			return nil
		}
		m = m.withStatus(StatusMsg{Status: sts, At: time.Now(), Err: err})
		fmt.Fprintf(out, "%s\n%s", time.Now().Format(time.TimeOnly), m.Plain())
	}
	return nil
}
