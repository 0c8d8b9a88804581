package embedded_test

import (
	"context"
	"encoding/json"
	"os"
	"reflect"
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

// localRing rebuilds the router's ring from the default pool's member keys
// in the KV bucket with package ring, as a client in another language
// would, and returns the pool's revision.
func localRing(t testing.TB, nc *nats.Conn) (*ring.Ring, uint64) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctxT(t), bus.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	doc, rev := poolDoc(t, kv, bus.DefaultPool)
	rg, err := doc.Ring()
	if err != nil {
		t.Fatal(err)
	}
	return rg, rev
}

// bucketGet reads the ring key of the default bucket.
func bucketGet(js jetstream.JetStream) (jetstream.KeyValueEntry, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bus.DefaultBucket)
	if err != nil {
		return nil, err
	}
	return kv.Get(ctx, bus.RingKey)
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
		if info.Name != "natsroute" || !slices.Equal(subjects, []string{"route.nodes@natsroute", "route.pools@natsroute", "route.request@natsroute", "route.ring@natsroute"}) {
			t.Fatalf("micro info: %s", m.Data)
		}
		// The package documentation names every subject the Router serves.
		doc, err := os.ReadFile("../bus/doc.go")
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Join(strings.Fields(strings.ReplaceAll(string(doc), "//", "")), " ")
		for _, e := range info.Endpoints {
			if !strings.Contains(text, e.Subject) {
				t.Errorf("bus/doc.go does not name %s among the subjects the Router serves", e.Subject)
			}
		}
	})
}

// TestEncodingsAgree: every request field gives the same reply in JSON and
// in msgpack, and route.ring and route.nodes answer in the request's
// encoding.
func TestEncodingsAgree(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	for _, id := range []string{"a", "b", "c", "d"} {
		health(t, nc, id, okHealth)
	}
	drain := okHealth
	drain.Status = bus.StatusDraining
	health(t, nc, "d", drain)
	waitFor(t, 5*time.Second, "members", func() bool { return members(r) == "a,b,c,d(draining)" })
	for _, q := range []bus.Request{
		{Key: "user-42"},
		{Strategy: bus.StrategyConsistentHash, Key: "user-42", Count: 3, Explain: true},
		{Key: "order-9", Candidates: []string{"b", "d", "zz"}, Count: 2},
		{Keys: []string{"k1", "k2", "k3"}, Count: 2},
		{Strategy: bus.StrategyResourceAware, Candidates: []string{"c"}, Explain: true},
		{Strategy: bus.StrategyResourceAware, Candidates: []string{"a", "b"}, Count: 2, Explain: true},
		{Strategy: "Bogus"},
		{Key: "x", Count: 99},
	} {
		var replies [2]bus.Reply
		var codes [2]string
		for i, enc := range []bus.Encoding{bus.JSON, bus.Msgpack} {
			body, err := enc.Marshal(&q)
			if err != nil {
				t.Fatal(err)
			}
			m := req(t, nc, bus.SubjectRequest, body, nil)
			codes[i], _ = errorReply(t, m)
			if got := bus.DetectEncoding(m.Data, m.Header); got != enc {
				t.Fatalf("%+v: %v request answered in %v", q, enc, got)
			}
			if codes[i] == "" {
				if err := enc.Unmarshal(m.Data, &replies[i]); err != nil {
					t.Fatalf("%+v: %v reply: %v", q, enc, err)
				}
			}
		}
		if codes[0] != codes[1] {
			t.Fatalf("%+v: JSON code %q, msgpack code %q", q, codes[0], codes[1])
		}
		if q.Strategy == bus.StrategyResourceAware && len(q.Candidates) > 1 {
			// Random picks: compare the shape, not the nodes.
			if len(replies[0].Nodes) != 2 || len(replies[1].Nodes) != 2 || len(replies[0].Explanation.Nodes) != 2 || len(replies[1].Explanation.Nodes) != 2 {
				t.Fatalf("%+v: replies %+v / %+v", q, replies[0], replies[1])
			}
			continue
		}
		if !reflect.DeepEqual(replies[0], replies[1]) {
			t.Fatalf("%+v:\nJSON    %+v\nmsgpack %+v", q, replies[0], replies[1])
		}
	}
	for _, subject := range []string{bus.SubjectRing, bus.SubjectNodes} {
		m := req(t, nc, subject, []byte{0x80}, nil) // an empty msgpack map
		var v map[string]any
		if bus.DetectEncoding(m.Data, m.Header) != bus.Msgpack || msgpack.Unmarshal(m.Data, &v) != nil || v["revision"] == nil {
			t.Fatalf("%s in msgpack: %q", subject, m.Data)
		}
	}
}
