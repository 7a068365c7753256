package node

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dashboardPath is the Grafana dashboard shipped with the repository.
const dashboardPath = "../../../../docs/grafana/georepl.json"

// TestDashboardMetricsExist checks every query of the Grafana dashboard
// against the metrics the daemon exposes: each georepl_ series it names
// exists (a histogram's through _bucket, _sum or _count), each label it
// matches on, groups by or prints is one of that metric's, and each panel
// has at least one query.
func TestDashboardMetricsExist(t *testing.T) {
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct {
				Expr         string
				LegendFormat string
			}
		}
		Templating struct {
			List []struct {
				Name  string
				Query json.RawMessage
			}
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	defs := map[string]metricDef{}
	for _, m := range metricDefs {
		defs[m.name] = m
	}
	used := map[string]bool{}
	metricRE := regexp.MustCompile(`georepl_[a-z_]+`)
	selectorRE := regexp.MustCompile(`(georepl_[a-z_]+)\{([^}]*)\}`)
	matcherRE := regexp.MustCompile(`([a-z_]+)\s*(=~|!~|!=|=)`)
	groupRE := regexp.MustCompile(`by \(([^)]*)\)`)
	legendRE := regexp.MustCompile(`\{\{(\w+)\}\}`)
	resolve := func(where, name string) (metricDef, bool) {
		if m, ok := defs[name]; ok && !m.histogram {
			return m, true
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if m, ok := defs[strings.TrimSuffix(name, suffix)]; ok && m.histogram && strings.HasSuffix(name, suffix) {
				return m, true
			}
		}
		t.Errorf("%s: %s is not a metric the daemon exposes", where, name)
		return metricDef{}, false
	}
	check := func(where, expr, legend string) {
		var labels []string // every label the expression's metrics have
		for _, name := range metricRE.FindAllString(expr, -1) {
			if m, ok := resolve(where, name); ok {
				used[m.name] = true
				labels = append(labels, m.labels...)
				if m.histogram {
					labels = append(labels, "le")
				}
			}
		}
		for _, sel := range selectorRE.FindAllStringSubmatch(expr, -1) {
			m, ok := resolve(where, sel[1])
			if !ok {
				continue
			}
			for _, lm := range matcherRE.FindAllStringSubmatch(sel[2], -1) {
				if !slices.Contains(m.labels, lm[1]) {
					t.Errorf("%s: %s has no label %q (it has %q)", where, m.name, lm[1], m.labels)
				}
			}
		}
		for _, g := range groupRE.FindAllStringSubmatch(expr, -1) {
			for _, l := range strings.Split(g[1], ",") {
				if l = strings.TrimSpace(l); !slices.Contains(labels, l) {
					t.Errorf("%s: groups by %q, which none of its metrics has", where, l)
				}
			}
		}
		for _, l := range legendRE.FindAllStringSubmatch(legend, -1) {
			if !slices.Contains(labels, l[1]) {
				t.Errorf("%s: legend prints {{%s}}, which none of its metrics has", where, l[1])
			}
		}
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			check("panel "+p.Title, q.Expr, q.LegendFormat)
		}
	}
	for _, v := range dash.Templating.List {
		var q struct{ Query string }
		if json.Unmarshal(v.Query, &q) == nil && q.Query != "" {
			check("variable "+v.Name, q.Query, "")
		}
	}
	if len(used) < len(metricDefs)/2 {
		t.Errorf("the dashboard uses %d of the %d metrics: a parsing problem?", len(used), len(metricDefs))
	}
	for _, m := range metricDefs {
		if !used[m.name] {
			t.Errorf("the dashboard shows nothing of %s", m.name)
		}
	}
}
