package embedded_test

import (
	"bytes"
	"math"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/natsroute/natsroute/bus"
)

// TestScoresHaveFourDecimals: the scores in route.nodes and in a
// ResourceAware explanation are written with at most 4 decimals (they used
// to carry float noise such as 0.8492999999999999), in JSON and in msgpack.
func TestScoresHaveFourDecimals(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	cfg.Balancer.SlowStartWindow = time.Hour // every node ramps: slow_start is on the wire
	startRouter(t, connect(t, s.ClientURL()), cfg)
	for i, id := range []string{"a", "b", "c"} {
		f := float64(i)
		health(t, nc, id, bus.Health{CPUUsage: 15.07 + 11.3*f, MemoryUsage: 41.7 - 3.1*f, ActiveConnections: 123 + 7*int64(i), AvgLatency: time.Duration(7+i) * time.Millisecond, Weight: 1.3 + f})
	}
	waitFor(t, 5*time.Second, "3 nodes reported", func() bool {
		m, err := nc.Request(bus.SubjectNodes, []byte(`{}`), time.Second)
		return err == nil && bytes.Count(m.Data, []byte(`"reported":true`)) == 3
	})

	number := regexp.MustCompile(`"(score|slow_start)":([-0-9.eE+]+)`)
	check := func(what string, data []byte) {
		t.Helper()
		found := number.FindAllSubmatch(data, -1)
		if len(found) == 0 {
			t.Fatalf("%s: no score in %s", what, data)
		}
		for _, f := range found {
			v, err := strconv.ParseFloat(string(f[2]), 64)
			if err != nil || math.Round(v*1e4)/1e4 != v {
				t.Errorf("%s: %s is %s, want at most 4 decimals", what, f[1], f[2])
			}
		}
	}
	check("route.nodes (JSON)", req(t, nc, bus.SubjectNodes, []byte(`{}`), nil).Data)
	check("explain (JSON)", req(t, nc, bus.SubjectRequest, []byte(`{"strategy":"ResourceAware","explain":true}`), nil).Data)

	c, err := bus.NewClient(nc) // msgpack
	if err != nil {
		t.Fatal(err)
	}
	four := func(v float64) bool { return math.Round(v*1e4)/1e4 == v }
	st, err := c.Nodes(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if !four(n.Score) || !four(n.SlowStart) || n.SlowStart == 0 {
			t.Errorf("route.nodes (msgpack): %s score %v slow_start %v", n.ID, n.Score, n.SlowStart)
		}
	}
	r, err := c.Select(ctxT(t), bus.Request{Strategy: bus.StrategyResourceAware, Explain: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range r.Explanation.Nodes {
		if !four(n.Score) {
			t.Errorf("explain (msgpack): %s score %v", n.ID, n.Score)
		}
	}
}
