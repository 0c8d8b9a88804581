package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"go.yaml.in/yaml/v3"
)

// The monitoring that ships with the router (deploy/): Prometheus rules,
// their promtool tests and a Grafana dashboard. These tests keep it honest
// against the router as built: every metric the rules and the dashboard
// name must be on a live router's /metrics, every expression must parse,
// and the rules must see, in a real Prometheus scraping a real router,
// what they are written to see. They drive the router only through its
// binary and NATS.

const (
	rulesPath     = "../../deploy/prometheus/natsroute-rules.yaml"
	rulesTestPath = "../../deploy/prometheus/natsroute-rules.test.yaml"
	dashboardPath = "../../deploy/grafana/natsroute-dashboard.json"
	sectionPath   = "../../README.md"
)

// promTool returns the path of prometheus or promtool (Debian's package
// prometheus has both). Where it is missing the test is skipped, saying
// how to install it; under CI it fails instead, so CI never skips quietly.
func promTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("%s is not installed; install Debian's package: apt-get install prometheus", name)
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatalf("%s (CI=true: .ci/run installs it, this test must not skip)", msg)
	}
	t.Skip(msg)
	return ""
}

// runTool runs a tool to completion and returns its combined output.
func runTool(t *testing.T, path string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	return string(out), err
}

// --- the rules file ---

type promRule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func readRules(t *testing.T) []promRule {
	t.Helper()
	b, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string     `yaml:"name"`
			Rules []promRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", rulesPath, err)
	}
	var rules []promRule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	if len(rules) == 0 {
		t.Fatalf("%s has no rules", rulesPath)
	}
	return rules
}

// --- the dashboard ---

// dashQuery is one PromQL expression of the dashboard and where it is.
type dashQuery struct {
	where, expr string
}

func readDashboard(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// grafanaVars are what the dashboard's variables stand for when its
// expressions are checked: Grafana's interval variables become durations,
// the pool selector a regular expression.
var grafanaVars = map[string]string{"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "pool": ".*"}

var grafanaVarRE = regexp.MustCompile(`\$(?:\{(\w+)(?::\w+)?\}|(\w+))`)

// expand replaces the dashboard's variables in expr.
func expand(expr string) (string, error) {
	var unknown []string
	out := grafanaVarRE.ReplaceAllStringFunc(expr, func(v string) string {
		m := grafanaVarRE.FindStringSubmatch(v)
		name := m[1] + m[2]
		if s, ok := grafanaVars[name]; ok {
			return s
		}
		unknown = append(unknown, v)
		return v
	})
	if unknown != nil {
		return "", fmt.Errorf("variables %v unknown to this test: add them to grafanaVars", unknown)
	}
	return out, nil
}

var labelValuesRE = regexp.MustCompile(`^\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*$`)

// dashboardQueries returns every PromQL expression of the dashboard, its
// panels' (rows and nested panels included) and its query variables',
// with the variables expanded.
func dashboardQueries(t *testing.T, d map[string]any) []dashQuery {
	t.Helper()
	var out []dashQuery
	add := func(where, expr string) {
		e, err := expand(expr)
		if err != nil {
			t.Errorf("%s: %q: %v", where, expr, err)
			return
		}
		out = append(out, dashQuery{where, e})
	}
	var walk func(v any, where string)
	walk = func(v any, where string) {
		switch v := v.(type) {
		case map[string]any:
			if title, ok := v["title"].(string); ok {
				where = fmt.Sprintf("panel %q", title)
			}
			if e, ok := v["expr"].(string); ok {
				add(fmt.Sprintf("%s target %v", where, v["refId"]), e)
			}
			for _, k := range slices.Sorted(maps.Keys(v)) {
				if k != "templating" {
					walk(v[k], where)
				}
			}
		case []any:
			for _, x := range v {
				walk(x, where)
			}
		}
	}
	walk(d["panels"], "dashboard")
	tmpl, _ := d["templating"].(map[string]any)
	vars, _ := tmpl["list"].([]any)
	for _, v := range vars {
		v, _ := v.(map[string]any)
		if v["type"] != "query" {
			continue
		}
		where := fmt.Sprintf("variable %v", v["name"])
		q, ok := v["query"].(string)
		if m, isMap := v["query"].(map[string]any); isMap {
			q, ok = m["query"].(string)
		}
		if !ok {
			t.Errorf("%s: no query", where)
			continue
		}
		if m := labelValuesRE.FindStringSubmatch(q); m != nil {
			q = m[1]
		} else {
			t.Errorf("%s: %q: this test reads only label_values(metric, label)", where, q)
			continue
		}
		add(where, q)
	}
	return out
}

// --- a live router ---

// monitoredRouter is the router binary on its embedded NATS server, with
// load-aware ConsistentHash on, so that every labelled series can exist.
type monitoredRouter struct {
	p           *process
	nc          *nats.Conn
	metricsAddr string // host:port of /metrics
}

func startMonitoredRouter(t *testing.T) *monitoredRouter {
	t.Helper()
	natsPort, httpPort := freePort(t), freePort(t)
	r := &monitoredRouter{metricsAddr: fmt.Sprintf("127.0.0.1:%d", httpPort)}
	r.p = start(t, nil, "--listen", fmt.Sprintf("127.0.0.1:%d", natsPort), "--store-dir", t.TempDir(),
		"--http", r.metricsAddr, "--balance-factor", "1.1", "--shed-interval", "100ms")
	waitFor(t, 20*time.Second, "/readyz", func() bool { code, _ := httpGet("http://" + r.metricsAddr + "/readyz"); return code == 200 })
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", natsPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	r.nc = nc
	return r
}

func (r *monitoredRouter) report(t *testing.T, node string, h bus.Health) {
	t.Helper()
	data, err := bus.EncodeHealth(node, h, bus.JSON)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.nc.Publish(bus.HealthSubject(node), data); err != nil {
		t.Fatal(err)
	}
}

// badReport publishes a report no router accepts (reason malformed).
func (r *monitoredRouter) badReport(t *testing.T) {
	t.Helper()
	if err := r.nc.Publish(bus.HealthSubject("broken-node"), []byte("not a report")); err != nil {
		t.Fatal(err)
	}
}

// request sends a route.request and returns the code of its answer.
func (r *monitoredRouter) request(t *testing.T, req bus.Request) int {
	t.Helper()
	data, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := r.nc.Request(bus.SubjectRequest, data, 5*time.Second)
	if err != nil {
		t.Fatalf("route.request %s: %v", data, err)
	}
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
		n, _ := strconv.Atoi(code)
		return n
	}
	return 200
}

func (r *monitoredRouter) metrics(t *testing.T) string {
	t.Helper()
	code, body := httpGet("http://" + r.metricsAddr + "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	return body
}

// reportAll has the default pool's two members report, node-a with far
// more connections than node-b (so that it sheds), and pool hot's two
// members report CPU above the 90 % threshold (so that ResourceAware may
// pick neither).
func (r *monitoredRouter) reportAll(t *testing.T) {
	t.Helper()
	r.report(t, "node-a", bus.Health{CPUUsage: 20, MemoryUsage: 30, ActiveConnections: 1000})
	r.report(t, "node-b", bus.Health{CPUUsage: 20, MemoryUsage: 30, ActiveConnections: 10})
	r.report(t, "hot-1", bus.Health{CPUUsage: 95, MemoryUsage: 30, ActiveConnections: 10, Pools: []string{"hot"}})
	r.report(t, "hot-2", bus.Health{CPUUsage: 97, MemoryUsage: 30, ActiveConnections: 10, Pools: []string{"hot"}})
}

// wireNode is a node as route.nodes describes it (subjects.md), decoded
// here without the router's own types.
type wireNode struct {
	ID       string  `json:"id"`
	Member   bool    `json:"member"`
	Eligible bool    `json:"eligible"`
	Shed     float64 `json:"shed"`
}

// nodes returns a pool's nodes by id, as a router answers route.nodes
// (none if the pool does not exist yet).
func (r *monitoredRouter) nodes(t *testing.T, pool string) map[string]wireNode {
	t.Helper()
	msg, err := r.nc.Request(bus.SubjectNodes, fmt.Appendf(nil, `{"pool":%q}`, pool), 5*time.Second)
	if err != nil {
		t.Fatalf("route.nodes %s: %v", pool, err)
	}
	out := map[string]wireNode{}
	if msg.Header.Get("Nats-Service-Error-Code") != "" {
		return out
	}
	var st struct {
		Nodes []wireNode `json:"nodes"`
	}
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		t.Fatalf("route.nodes %s: %v: %s", pool, err, msg.Data)
	}
	for _, n := range st.Nodes {
		out[n.ID] = n
	}
	return out
}

// waitMembers reports every node and waits until both pools have their
// two members on the ring, and pool hot none eligible. It asks the router
// over NATS rather than reading /metrics, whose names are what the tests
// here check.
func (r *monitoredRouter) waitMembers(t *testing.T) {
	t.Helper()
	r.reportAll(t)
	waitFor(t, 15*time.Second, "both pools' members on the ring, none eligible in pool hot", func() bool {
		def, hot := r.nodes(t, bus.DefaultPool), r.nodes(t, "hot")
		return def["node-a"].Member && def["node-a"].Eligible && def["node-b"].Member && def["node-b"].Eligible &&
			hot["hot-1"].Member && !hot["hot-1"].Eligible && hot["hot-2"].Member && !hot["hot-2"].Eligible
	})
}

// sampleNames returns the names of the samples in a Prometheus text
// exposition: what a scrape stores. A histogram's samples are its
// _bucket, _sum and _count series, so an expression that names one of
// them finds it here, and one that names the family's base name does not.
func sampleNames(exposition string) map[string]bool {
	names := map[string]bool{}
	for _, line := range strings.Split(exposition, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}

// liveMetricNames starts a router, drives it until every series the
// monitoring uses exists (a request answered, a report rejected, a
// member shedding), and returns the sample names of its /metrics. It
// waits on the router's answers over NATS and on label sets, never on a
// metric name: those are what the caller checks.
func liveMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	r := startMonitoredRouter(t)
	r.badReport(t)
	r.waitMembers(t)
	waitFor(t, 15*time.Second, "node-a to shed", func() bool {
		r.reportAll(t) // fresh loads for the shed policy
		return r.nodes(t, bus.DefaultPool)["node-a"].Shed > 0
	})
	if code := r.request(t, bus.Request{Key: "user-42"}); code != 200 {
		t.Fatalf("ConsistentHash request answered %d", code)
	}
	var m string
	waitFor(t, 10*time.Second, "the request, the bad report and the shed on /metrics", func() bool {
		m = r.metrics(t)
		return strings.Contains(m, `{code="200",strategy="ConsistentHash"} 1`) && strings.Contains(m, `{reason="malformed"} 1`) &&
			strings.Contains(m, `{node="node-a",pool="default"}`)
	})
	return sampleNames(m)
}

// TestDashboard checks that the dashboard imports as the README says:
// valid JSON, a Prometheus data source variable that every panel and
// query uses, a pool selector, unique panel ids, and PromQL that parses.
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d["uid"] != "natsroute" || d["title"] != "natsroute" {
		t.Errorf("uid %v, title %v: want natsroute (the README and the provisioning name it)", d["uid"], d["title"])
	}
	vars := map[string]map[string]any{}
	tmpl, _ := d["templating"].(map[string]any)
	list, _ := tmpl["list"].([]any)
	for _, v := range list {
		v, _ := v.(map[string]any)
		vars[fmt.Sprint(v["name"])] = v
	}
	if ds := vars["datasource"]; ds == nil || ds["type"] != "datasource" || ds["query"] != "prometheus" {
		t.Errorf("want a variable datasource of type datasource, query prometheus; got %v", ds)
	}
	if p := vars["pool"]; p == nil || p["type"] != "query" || p["includeAll"] != true || p["multi"] != true {
		t.Errorf("want a multi-value query variable pool with All; got %v", p)
	}
	// Every datasource reference is the variable, and panel ids are unique.
	ids := map[float64]string{}
	var walk func(v any, where string)
	walk = func(v any, where string) {
		switch v := v.(type) {
		case map[string]any:
			if title, ok := v["title"].(string); ok {
				where = title
			}
			if ds, ok := v["datasource"].(map[string]any); ok && ds["type"] != "grafana" {
				if ds["type"] != "prometheus" || ds["uid"] != "${datasource}" {
					t.Errorf("%q: datasource %v, want {type: prometheus, uid: ${datasource}}", where, ds)
				}
			}
			if _, isPanel := v["gridPos"]; isPanel {
				id, _ := v["id"].(float64)
				if other, dup := ids[id]; dup || id == 0 {
					t.Errorf("panel %q: id %v (also %q)", where, v["id"], other)
				}
				ids[id] = where
				if _, hasTargets := v["targets"]; !hasTargets && v["type"] != "row" {
					t.Errorf("panel %q has no targets", where)
				}
			}
			for _, x := range v {
				walk(x, where)
			}
		case []any:
			for _, x := range v {
				walk(x, where)
			}
		}
	}
	walk(d["panels"], "")
	walk(d["templating"], "templating")

	qs := dashboardQueries(t, d)
	if len(qs) < 10 {
		t.Fatalf("found %d expressions in the dashboard", len(qs))
	}
	t.Run("promql parses", func(t *testing.T) {
		checkParses(t, promTool(t, "promtool"), "dashboard", qs)
	})
}

// checkParses has promtool parse every expression, as the recording rules
// of a temporary rules file: `promtool check rules` parses each with
// Prometheus's own PromQL parser and names the rule of any that fails.
func checkParses(t *testing.T, promtool, prefix string, qs []dashQuery) {
	t.Helper()
	type rec struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	type group struct {
		Name  string `yaml:"name"`
		Rules []rec  `yaml:"rules"`
	}
	g := group{Name: prefix}
	for i, q := range qs {
		g.Rules = append(g.Rules, rec{fmt.Sprintf("%s:expr_%d", prefix, i), q.expr})
	}
	b, err := yaml.Marshal(map[string][]group{"groups": {g}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), prefix+"-exprs.yaml")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runTool(t, promtool, "check", "rules", file)
	if err != nil {
		var where strings.Builder
		for i, q := range qs {
			fmt.Fprintf(&where, "  %s:expr_%d  %s: %s\n", prefix, i, q.where, q.expr)
		}
		t.Fatalf("promtool check rules: %v\n%s\nthe expressions:\n%s", err, out, where.String())
	}
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(qs)); !strings.Contains(out, want) {
		t.Fatalf("promtool check rules: want %q in\n%s", want, out)
	}
}

// TestMonitoringMetricsExported checks that every metric the dashboard
// and the rules name is on a live router's /metrics, so that renaming or
// dropping a metric fails here rather than in an operator's dashboard.
func TestMonitoringMetricsExported(t *testing.T) {
	exported := liveMetricNames(t)
	rules := readRules(t)
	recorded := map[string]bool{}
	for _, r := range rules {
		if r.Record != "" {
			recorded[r.Record] = true
		}
	}
	check := func(t *testing.T, where, expr string) {
		t.Helper()
		names := promqlMetricNames(expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric name found in %q", where, expr)
		}
		for _, n := range names {
			switch {
			case exported[n]:
			case n == "up": // Prometheus's own, per target
			case strings.Contains(n, ":") && recorded[n]:
			case strings.Contains(n, ":"):
				t.Errorf("%s: %s is no recording rule of %s", where, n, filepath.Base(rulesPath))
			default:
				t.Errorf("%s: %s is not on the router's /metrics (expression %q)", where, n, expr)
			}
		}
	}
	t.Run("dashboard", func(t *testing.T) {
		for _, q := range dashboardQueries(t, readDashboard(t)) {
			check(t, q.where, q.expr)
		}
	})
	t.Run("rules", func(t *testing.T) {
		for _, r := range rules {
			check(t, "rule "+r.Record+r.Alert, r.Expr)
		}
	})
}

// TestRulesFile checks what promtool does not: every alert has a severity,
// a summary and a description, a promtool case in which it fires, and a
// place in the README's Monitoring section.
func TestRulesFile(t *testing.T) {
	b, err := os.ReadFile(rulesTestPath)
	if err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(b, &tests); err != nil {
		t.Fatal(err)
	}
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			fires[a.Alertname] = fires[a.Alertname] || len(a.ExpAlerts) > 0
		}
	}
	section, err := os.ReadFile(sectionPath)
	if err != nil {
		t.Fatal(err)
	}
	alerts := 0
	for _, r := range readRules(t) {
		if r.Alert == "" {
			continue
		}
		alerts++
		if s := r.Labels["severity"]; s != "warning" && s != "critical" {
			t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
		}
		if r.Annotations["summary"] == "" || len(r.Annotations["description"]) < 80 {
			t.Errorf("%s: want a summary and a description that says what to do", r.Alert)
		}
		if !fires[r.Alert] {
			t.Errorf("%s: no case in %s where it fires", r.Alert, filepath.Base(rulesTestPath))
		}
		if !bytes.Contains(section, []byte("`"+r.Alert+"`")) {
			t.Errorf("%s is not in %s", r.Alert, sectionPath)
		}
	}
	if alerts < 10 {
		t.Errorf("%d alerts", alerts)
	}
}

// TestPromtoolRules runs what CI runs: promtool's own check of the rules
// file and its unit tests.
func TestPromtoolRules(t *testing.T) {
	promtool := promTool(t, "promtool")
	for _, args := range [][]string{{"check", "rules", rulesPath}, {"test", "rules", rulesTestPath}} {
		out, err := runTool(t, promtool, args...)
		if err != nil || !strings.Contains(out, "SUCCESS") {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestDockerMonitoring checks, without a Docker engine, that compose.yaml
// wires Prometheus and Grafana to files that exist and to each other:
// every mounted file is there, Prometheus loads the mounted rules and
// scrapes, as job natsroute, the HTTP address of every router service,
// and Grafana's provisioning finds the mounted dashboard and Prometheus.
func TestDockerMonitoring(t *testing.T) {
	readYAML := func(path string, into any) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, into); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	type service struct {
		Image    string   `yaml:"image"`
		Command  []string `yaml:"command"`
		Volumes  []string `yaml:"volumes"`
		Profiles []string `yaml:"profiles"`
		Ports    []string `yaml:"ports"`
	}
	var compose struct {
		Services map[string]service `yaml:"services"`
	}
	readYAML("../../docker/compose.yaml", &compose)
	// mounts maps each file a service mounts, by its path in the
	// container, to its path here; every one must exist.
	mounts := func(name string) map[string]string {
		t.Helper()
		s, ok := compose.Services[name]
		if !ok {
			t.Fatalf("compose.yaml has no service %s", name)
		}
		m := map[string]string{}
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) < 2 {
				t.Fatalf("%s: volume %q", name, v)
			}
			src := filepath.Join("../../docker", parts[0])
			if _, err := os.Stat(src); err != nil {
				t.Errorf("%s mounts %s: %v", name, parts[0], err)
			}
			m[parts[1]] = src
		}
		return m
	}

	prom := mounts("prometheus")
	var promConfig struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	configFile := prom["/etc/prometheus/prometheus.yml"]
	if configFile == "" {
		t.Fatal("the prometheus service does not mount /etc/prometheus/prometheus.yml")
	}
	readYAML(configFile, &promConfig)
	for _, rf := range promConfig.RuleFiles {
		if got, want := filepath.Clean(prom[rf]), filepath.Clean(rulesPath); got != want {
			t.Errorf("prometheus.yml loads %s, mounted from %q; want %s", rf, prom[rf], want)
		}
	}
	if len(promConfig.RuleFiles) != 1 {
		t.Errorf("prometheus.yml rule_files %v: want the one rules file", promConfig.RuleFiles)
	}
	var targets []string
	for _, sc := range promConfig.ScrapeConfigs {
		if sc.JobName != "natsroute" {
			continue
		}
		for _, st := range sc.StaticConfigs {
			targets = append(targets, st.Targets...)
		}
	}
	var routers []string
	for name, s := range compose.Services {
		if len(s.Command) > 0 && s.Command[0] == "serve" {
			routers = append(routers, name)
			i := slices.Index(s.Command, "--http")
			if i < 0 || i+1 >= len(s.Command) || !strings.HasSuffix(s.Command[i+1], ":8080") {
				t.Errorf("router service %s does not serve HTTP on :8080: %v", name, s.Command)
			}
			if !slices.Contains(targets, name+":8080") {
				t.Errorf("prometheus.yml does not scrape router service %s as job natsroute (targets %v)", name, targets)
			}
		}
	}
	if len(routers) < 2 || len(targets) != len(routers) {
		t.Errorf("routers %v, targets %v", routers, targets)
	}

	g, ok := compose.Services["grafana"]
	if !ok || !slices.Contains(g.Profiles, "grafana") {
		t.Fatalf("want an optional grafana service in the profile grafana; got %+v", g)
	}
	graf := mounts("grafana")
	var dashboardDir string
	for dst, src := range graf {
		if filepath.Clean(src) == filepath.Clean(dashboardPath) {
			dashboardDir = filepath.Dir(dst)
		}
	}
	var providers struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(graf["/etc/grafana/provisioning/dashboards/natsroute.yaml"], &providers)
	if dashboardDir == "" || len(providers.Providers) != 1 || providers.Providers[0].Options.Path != dashboardDir {
		t.Errorf("the dashboard is mounted in %q, the provider reads %+v", dashboardDir, providers.Providers)
	}
	var sources struct {
		Datasources []struct {
			Type string `yaml:"type"`
			URL  string `yaml:"url"`
		} `yaml:"datasources"`
	}
	readYAML(graf["/etc/grafana/provisioning/datasources/natsroute.yaml"], &sources)
	if len(sources.Datasources) != 1 || sources.Datasources[0].Type != "prometheus" || sources.Datasources[0].URL != "http://prometheus:9090" {
		t.Errorf("datasources %+v: want the compose service prometheus", sources.Datasources)
	}

	// promtool checks the configuration itself, with its rules file at
	// its place in the repository instead of the container.
	t.Run("promtool check config", func(t *testing.T) {
		promtool := promTool(t, "promtool")
		b, err := os.ReadFile(configFile)
		if err != nil {
			t.Fatal(err)
		}
		rules, err := filepath.Abs(rulesPath)
		if err != nil {
			t.Fatal(err)
		}
		local := filepath.Join(t.TempDir(), "prometheus.yml")
		if err := os.WriteFile(local, bytes.ReplaceAll(b, []byte(promConfig.RuleFiles[0]), []byte(rules)), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := runTool(t, promtool, "check", "config", local); err != nil || !strings.Contains(out, "SUCCESS") {
			t.Fatalf("promtool check config: %v\n%s", err, out)
		}
	})
}
