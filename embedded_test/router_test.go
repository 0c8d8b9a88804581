package embedded_test

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/ring"
	"github.com/vmihailenco/msgpack/v5"
)

// localRing rebuilds the router's ring from the KV bucket with package ring,
// as a client in another language would.
func localRing(t testing.TB, nc *nats.Conn) (*ring.Ring, uint64) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bus.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, bus.RingKey)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := bus.DecodeRingDocument(e.Value())
	if err != nil {
		t.Fatal(err)
	}
	rg, err := doc.Ring()
	if err != nil {
		t.Fatal(err)
	}
	return rg, e.Revision()
}

func errorReply(t testing.TB, m *nats.Msg) (code string, msg string) {
	t.Helper()
	return m.Header.Get("Nats-Service-Error-Code"), m.Header.Get("Nats-Service-Error")
}

func TestContract(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))

	// An empty ring: 503 for both strategies.
	for _, body := range []string{`{"key":"user-42"}`, `{"strategy":"ResourceAware"}`} {
		m := req(t, nc, bus.SubjectRequest, []byte(body), nil)
		code, msg := errorReply(t, m)
		var eb struct {
			Error string `json:"error"`
			Code  int    `json:"code"`
		}
		if err := json.Unmarshal(m.Data, &eb); err != nil || code != "503" || eb.Code != 503 || eb.Error != msg || msg == "" {
			t.Fatalf("%s on an empty ring: code %q msg %q body %q", body, code, msg, m.Data)
		}
	}

	for _, id := range []string{"alpha", "beta", "gamma", "delta"} {
		health(t, nc, id, okHealth)
	}
	heavy := okHealth
	heavy.Weight = 3
	health(t, nc, "epsilon", heavy)
	waitFor(t, 5*time.Second, "five members", func() bool { return members(r) == "alpha,beta,delta,epsilon*3,gamma" })
	local, rev := localRing(t, nc)
	if rev != r.Revision() || rev == 0 {
		t.Fatalf("KV revision %d, router revision %d", rev, r.Revision())
	}

	t.Run("json", func(t *testing.T) {
		got := jsonReply(t, nc, `{"key":"user-42"}`)
		want, _ := local.Get("user-42")
		if got.Node != want || got.Strategy != bus.StrategyConsistentHash || got.Revision != rev || got.Nodes != nil {
			t.Fatalf("reply %+v, want node %s revision %d", got, want, rev)
		}
	})
	t.Run("msgpack", func(t *testing.T) {
		body, _ := msgpack.Marshal(map[string]any{"key": "user-42", "count": 3})
		m := req(t, nc, bus.SubjectRequest, body, nil)
		var got bus.Reply
		if err := msgpack.Unmarshal(m.Data, &got); err != nil {
			t.Fatalf("msgpack reply %q: %v", m.Data, err)
		}
		want, _ := local.GetN("user-42", 3)
		if got.Node != want[0] || !slices.Equal(got.Nodes, want) || got.Revision != rev {
			t.Fatalf("reply %+v, want %v", got, want)
		}
	})
	t.Run("content-type header", func(t *testing.T) {
		// A JSON body that does not start with '{' is still JSON with the header.
		m := req(t, nc, bus.SubjectRequest, []byte(` {"key":"k"}`), nats.Header{"Content-Type": []string{"application/json"}})
		var got bus.Reply
		if err := json.Unmarshal(m.Data, &got); err != nil || got.Node == "" {
			t.Fatalf("reply %q: %v", m.Data, err)
		}
	})
	t.Run("candidates", func(t *testing.T) {
		got := jsonReply(t, nc, `{"key":"order-7","count":2,"candidates":["beta","gamma","zeta"]}`)
		want, _ := local.GetFrom("order-7", []string{"beta", "gamma", "zeta"}, 2)
		if !slices.Equal(got.Nodes, want) {
			t.Fatalf("nodes %v, want %v", got.Nodes, want)
		}
	})
	t.Run("batch", func(t *testing.T) {
		var keys []string
		for i := range 100 {
			keys = append(keys, "k"+strconv.Itoa(i))
		}
		body, _ := json.Marshal(map[string]any{"keys": keys, "count": 2})
		got := jsonReply(t, nc, string(body))
		if len(got.Results) != len(keys) || got.Revision != rev {
			t.Fatalf("%d results, revision %d", len(got.Results), got.Revision)
		}
		for i, res := range got.Results {
			want, _ := local.GetN(keys[i], 2)
			if res.Key != keys[i] || res.Node != want[0] || !slices.Equal(res.Nodes, want) {
				t.Fatalf("result %d = %+v, want %s %v", i, res, keys[i], want)
			}
		}
	})
	t.Run("explain", func(t *testing.T) {
		got := jsonReply(t, nc, `{"key":"user-42","explain":true}`)
		if got.Explanation == nil || len(got.Explanation.KeyHash) != 16 {
			t.Fatalf("explain: %+v", got.Explanation)
		}
		got = jsonReply(t, nc, `{"strategy":"ResourceAware","explain":true}`)
		if got.Explanation == nil || len(got.Explanation.Nodes) != 5 {
			t.Fatalf("ResourceAware explain: %+v", got.Explanation)
		}
	})
	t.Run("resourceaware", func(t *testing.T) {
		seen := map[string]bool{}
		for range 200 {
			got := jsonReply(t, nc, `{}`)
			if got.Strategy != bus.StrategyResourceAware || got.Revision != rev {
				t.Fatalf("reply %+v", got)
			}
			seen[got.Node] = true
		}
		if len(seen) != 5 {
			t.Fatalf("ResourceAware picked %v over 200 requests, want all 5 healthy nodes", seen)
		}
		got := jsonReply(t, nc, `{"strategy":"ResourceAware","count":3,"candidates":["alpha","beta","gamma","delta"]}`)
		if len(got.Nodes) != 3 || got.Node != got.Nodes[0] || slices.Contains(got.Nodes, "epsilon") {
			t.Fatalf("ResourceAware count 3 over candidates: %+v", got)
		}
	})
	t.Run("errors", func(t *testing.T) {
		for _, c := range []struct{ body, code, says string }{
			{`{"strategy":"Random"}`, "400", "unknown strategy"},
			{`{"strategy":"ConsistentHash"}`, "400", "needs a key"},
			{`{"key":"a","count":-1}`, "400", "count -1"},
			{`{"key":"a","keys":["b"]}`, "400", "not both"},
			{`{"strategy":"ResourceAware","keys":["a"]}`, "400", "needs strategy ConsistentHash"},
			{`{"key":"a","candidates":["no.dots"]}`, "400", "candidates[0]"},
			{`{"key":5}`, "400", "invalid JSON"},
			{``, "400", "empty body"},
		} {
			m := req(t, nc, bus.SubjectRequest, []byte(c.body), nil)
			code, msg := errorReply(t, m)
			if code != c.code || !strings.Contains(msg, c.says) {
				t.Errorf("%s: code %q message %q, want %s mentioning %q", c.body, code, msg, c.code, c.says)
			}
		}
		// A msgpack request gets its error body in msgpack.
		body, _ := msgpack.Marshal(map[string]any{"strategy": "Nope"})
		m := req(t, nc, bus.SubjectRequest, body, nil)
		var eb struct {
			Error string `msgpack:"error"`
			Code  int    `msgpack:"code"`
		}
		if err := msgpack.Unmarshal(m.Data, &eb); err != nil || eb.Code != 400 || !strings.Contains(eb.Error, "unknown strategy") {
			t.Fatalf("msgpack error body %+v: %v", eb, err)
		}
	})
	t.Run("route.ring", func(t *testing.T) {
		m := req(t, nc, bus.SubjectRing, nil, nil)
		var st bus.RingState
		if err := json.Unmarshal(m.Data, &st); err != nil {
			t.Fatal(err)
		}
		if st.Revision != rev || len(st.Ring.Nodes) != 5 || st.Ring.Format != 1 || st.Ring.Hash != "xxhash64" || st.Ring.VNodes != 150 {
			t.Fatalf("route.ring: %+v", st)
		}
	})
	t.Run("route.nodes", func(t *testing.T) {
		m := req(t, nc, bus.SubjectNodes, nil, nil)
		var st bus.NodesState
		if err := json.Unmarshal(m.Data, &st); err != nil {
			t.Fatal(err)
		}
		if len(st.Nodes) != 5 || !st.Nodes[0].Member || !st.Nodes[0].Eligible || st.Nodes[0].ReportAgeMS < 0 || st.Nodes[3].Weight != 3 {
			t.Fatalf("route.nodes: %+v", st)
		}
	})
	t.Run("micro discovery", func(t *testing.T) {
		m := req(t, nc, "$SRV.INFO.natsroute", nil, nil)
		var info struct {
			Name      string `json:"name"`
			Endpoints []struct {
				Subject    string `json:"subject"`
				QueueGroup string `json:"queue_group"`
			} `json:"endpoints"`
		}
		if err := json.Unmarshal(m.Data, &info); err != nil {
			t.Fatal(err)
		}
		var subjects []string
		for _, e := range info.Endpoints {
			subjects = append(subjects, e.Subject+"@"+e.QueueGroup)
		}
		slices.Sort(subjects)
		if info.Name != "natsroute" || !slices.Equal(subjects, []string{"route.nodes@natsroute", "route.request@natsroute", "route.ring@natsroute"}) {
			t.Fatalf("micro info: %s", m.Data)
		}
	})
}
