package main

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/natsroute/natsroute/bus"
)

// A real Prometheus (Debian's package) scraping the router binary, with
// the shipped rules, queried through its HTTP API.

type promAPI struct {
	base string
	c    *http.Client
}

func (p promAPI) get(path string, q url.Values, into any) error {
	u := p.base + path
	if q != nil {
		u += "?" + q.Encode()
	}
	resp, err := p.c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return fmt.Errorf("%s: %d: %w", path, resp.StatusCode, err)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s", path, env.Error)
	}
	return json.Unmarshal(env.Data, into)
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s promSample) value() float64 {
	v, _ := s.Value[1].(string)
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return math.NaN()
	}
	return f
}

func (p promAPI) query(expr string) ([]promSample, error) {
	var d struct {
		Result []promSample `json:"result"`
	}
	err := p.get("/api/v1/query", url.Values{"query": {expr}}, &d)
	return d.Result, err
}

type promAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func (p promAPI) alerts() ([]promAlert, error) {
	var d struct {
		Alerts []promAlert `json:"alerts"`
	}
	err := p.get("/api/v1/alerts", nil, &d)
	return d.Alerts, err
}

// alert returns the state of the named alert whose labels include want
// ("" if it is not active).
func alertState(alerts []promAlert, name string, want map[string]string) string {
	for _, a := range alerts {
		if a.Labels["alertname"] != name {
			continue
		}
		match := true
		for k, v := range want {
			match = match && a.Labels[k] == v
		}
		if match {
			return a.State
		}
	}
	return ""
}

// startPrometheus runs Prometheus on a free port with the shipped rules,
// scraping target as job natsroute every second and evaluating every
// second, and waits until it is ready.
func startPrometheus(t *testing.T, target string) (promAPI, *process) {
	t.Helper()
	bin := promTool(t, "prometheus")
	rules, err := filepath.Abs(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	config := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(config, fmt.Appendf(nil, `global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: natsroute
    static_configs:
      - targets: [%q]
`, rules, target), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startProgram(t, bin, nil, "--config.file="+config, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	api := promAPI{base: "http://" + addr, c: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	waitFor(t, 20*time.Second, "Prometheus to be ready", func() bool {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("prometheus exited: %v\n%s", err, p.stderr)
		default:
		}
		code, _ := httpGet(api.base + "/-/ready")
		return code == 200
	})
	return api, p
}

// TestPrometheusEndToEnd runs a real Prometheus with the shipped rules
// against the router binary and checks, through Prometheus's HTTP API,
// that the recording rules and alerts see what the router does: a pool
// whose every member is above the CPU threshold, 503 answers (requests
// for a pool with no members), rejected reports, and then the router
// gone. The rules are the shipped ones, `for` included: an alert whose
// expression holds is pending, which is what the test waits for.
func TestPrometheusEndToEnd(t *testing.T) {
	promTool(t, "prometheus") // skip before starting anything
	t0 := time.Now()
	r := startMonitoredRouter(t)
	r.waitMembers(t)
	api, prom := startPrometheus(t, r.metricsAddr)
	t.Logf("router and Prometheus ready in %v", time.Since(t0).Round(time.Millisecond))

	// eventually drives the router (every counter must grow between
	// scrapes for a rate to see it) until check passes or the deadline.
	eventually := func(timeout time.Duration, what string, drive func(), check func() (bool, string)) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for {
			drive()
			ok, state := check()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out after %v waiting for %s; last seen:\n%s\nprometheus log:\n%s", timeout, what, state, prom.stderr)
			}
			time.Sleep(200 * time.Millisecond) // the driver's pace: 5 rounds a second
		}
	}
	drive := func() {
		r.reportAll(t)
		for range 10 {
			r.badReport(t)
		}
		for range 2 {
			if code := r.request(t, bus.Request{Key: "user-42"}); code != 200 {
				t.Fatalf("ConsistentHash in the default pool answered %d", code)
			}
		}
		// With no node eligible, ResourceAware falls back to the
		// overloaded ones: answered, but what the alert is for.
		if code := r.request(t, bus.Request{Strategy: bus.StrategyResourceAware, Pool: "hot"}); code != 200 {
			t.Fatalf("ResourceAware in pool hot answered %d, want 200 (a pick among the overloaded members)", code)
		}
		// A pool nobody serves: 503.
		for range 4 {
			if code := r.request(t, bus.Request{Strategy: bus.StrategyResourceAware, Pool: "nobody"}); code != bus.CodeNoNodes {
				t.Fatalf("ResourceAware in pool nobody answered %d, want %d", code, bus.CodeNoNodes)
			}
		}
	}

	// What the recording rules and the alerts must see while the router runs.
	type want struct {
		what  string
		query string               // at least one sample
		ok    func(v float64) bool // of every sample, if set
		alert string               // or: this alert pending or firing
		label map[string]string    // with these labels
	}
	wants := []want{
		{what: "the router scraped as job natsroute", query: `up{job="natsroute"} == 1`},
		{what: "pool hot: 2 members", query: `job_pool:natsroute_members:max{pool="hot"}`, ok: func(v float64) bool { return v == 2 }},
		{what: "pool hot: no eligible node", query: `job_pool:natsroute_eligible_nodes:max{pool="hot"}`, ok: func(v float64) bool { return v == 0 }},
		{what: "rejected reports: a rate above 0", query: `job_reason:natsroute_reports_rejected:rate5m{reason="malformed"}`, ok: func(v float64) bool { return v > 0 }},
		{what: "503 answers of ResourceAware: a rate above 0", query: `job:natsroute_requests:rate5m{strategy="ResourceAware",code="503"}`, ok: func(v float64) bool { return v > 0 }},
		{what: "the 5xx share above 5 %", query: `job:natsroute_requests_5xx:ratio_rate5m`, ok: func(v float64) bool { return v > 0.05 && v < 1 }},
		{what: "a p99 from the histogram, under its top bucket (50 ms)", query: `job_strategy:natsroute_request_duration_seconds:p99_5m{strategy="ConsistentHash"}`, ok: func(v float64) bool { return v > 0 && v <= 0.05 }},
		{what: "NatsroutePoolNoEligibleNode for pool hot", alert: "NatsroutePoolNoEligibleNode", label: map[string]string{"pool": "hot", "severity": "critical"}},
		{what: "NatsrouteRequestErrors", alert: "NatsrouteRequestErrors", label: map[string]string{"job": "natsroute"}},
		{what: "NatsrouteReportsRejected for malformed", alert: "NatsrouteReportsRejected", label: map[string]string{"reason": "malformed"}},
	}
	// Prometheus's scrape manager applies new targets on a 5 s tick: here
	// the first scrape came about 6 s after start, and everything below
	// was seen after 8-9 s. 40 s leaves room on a loaded machine.
	eventually(40*time.Second, "the rules to see the router", drive, func() (bool, string) {
		var missing []string
		alerts, err := api.alerts()
		if err != nil {
			return false, err.Error()
		}
		for _, w := range wants {
			if w.alert != "" {
				if s := alertState(alerts, w.alert, w.label); s != "pending" && s != "firing" {
					missing = append(missing, fmt.Sprintf("%s: state %q", w.what, s))
				}
				continue
			}
			ss, err := api.query(w.query)
			switch {
			case err != nil:
				missing = append(missing, fmt.Sprintf("%s: %s: %v", w.what, w.query, err))
			case len(ss) == 0:
				missing = append(missing, fmt.Sprintf("%s: %s: no sample", w.what, w.query))
			case w.ok != nil:
				for _, s := range ss {
					if !w.ok(s.value()) {
						missing = append(missing, fmt.Sprintf("%s: %s = %v", w.what, w.query, s.Value[1]))
					}
				}
			}
		}
		return len(missing) == 0, strings.Join(missing, "\n")
	})
	t.Logf("every expected series and alert seen %v after start", time.Since(t0).Round(time.Millisecond))

	// And what they must not see.
	alerts, err := api.alerts()
	if err != nil {
		t.Fatal(err)
	}
	for _, no := range []struct {
		name  string
		label map[string]string
	}{
		{"NatsroutePoolNoEligibleNode", map[string]string{"pool": "default"}},
		{"NatsrouteRouterDown", nil},
		{"NatsrouteNoRouterUp", nil},
		{"NatsrouteHealthReportsDropped", nil},
		{"NatsrouteKVWriteErrors", nil},
		{"NatsrouteRingDocumentOversize", nil},
		{"NatsrouteLegacyRouterPresent", nil},
	} {
		if s := alertState(alerts, no.name, no.label); s != "" {
			t.Errorf("%s %v is %s", no.name, no.label, s)
		}
	}
	// Every rule evaluates without error in this Prometheus.
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := api.get("/api/v1/rules", nil, &rules); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rules.Groups {
		for _, rl := range g.Rules {
			n++
			if rl.Health != "ok" {
				t.Errorf("rule %s (group %s): health %q: %s", rl.Name, g.Name, rl.Health, rl.LastError)
			}
		}
	}
	if want := len(readRules(t)); n != want {
		t.Errorf("Prometheus loaded %d rules, the file has %d", n, want)
	}

	// The router stops: Prometheus's scrapes fail, and both up alerts go
	// pending (their `for` is minutes; pending shows the expression holds).
	if code, _ := r.p.stop(t); code != 0 {
		t.Fatalf("router exit %d:\n%s", code, r.p.stderr)
	}
	eventually(20*time.Second, "the router-down alerts", func() {}, func() (bool, string) {
		alerts, err := api.alerts()
		if err != nil {
			return false, err.Error()
		}
		down := alertState(alerts, "NatsrouteRouterDown", map[string]string{"instance": r.metricsAddr, "job": "natsroute"})
		none := alertState(alerts, "NatsrouteNoRouterUp", nil)
		return down == "pending" && none == "pending", fmt.Sprintf("NatsrouteRouterDown %q, NatsrouteNoRouterUp %q", down, none)
	})
	t.Logf("done in %v", time.Since(t0).Round(time.Millisecond))
}
