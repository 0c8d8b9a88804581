package embedded_test

// Readers of the one-key-per-member layout (v3) against a real JetStream KV
// bucket: RingCache beside an independent reader written from the contract
// alone (subjects.md and DESIGN.md, "Ring publication, one key per member
// (v3)"), and RingCache on hand-written keys.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/ring"
)

// indepReader is a v3 reader written from the contract's text alone: it
// keeps the pool value and a map of member values, and builds each ring from
// scratch with ring.New. It shares no code with bus.PoolView.
type indepReader struct {
	pool string

	mu       sync.Mutex
	changed  chan struct{}
	initDone bool
	rev      uint64
	vnodes   int // 0: pools.<pool> holds no value
	members  map[string]ring.Member
}

func startIndepReader(t *testing.T, kv jetstream.KeyValue, pool string) *indepReader {
	t.Helper()
	r := &indepReader{pool: pool, changed: make(chan struct{}), members: map[string]ring.Member{}}
	watchEntries(t, kv, []string{"pools." + pool, "members." + pool + ".*"}, r.apply)
	return r
}

// watchEntries hands each entry of one KV watch of keys to apply, in
// stream order on one goroutine (nil: the initial values are all in),
// until the test ends.
func watchEntries(t *testing.T, kv jetstream.KeyValue, keys []string, apply func(jetstream.KeyValueEntry)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := kv.WatchFiltered(ctx, keys)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range w.Updates() {
			apply(e)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func (r *indepReader) apply(e jetstream.KeyValueEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer func() { close(r.changed); r.changed = make(chan struct{}) }()
	if e == nil {
		r.initDone = true
		return
	}
	// "a pool's revision is the highest KV revision among its keys ...
	// delete markers included"
	r.rev = max(r.rev, e.Revision())
	deleted := e.Operation() != jetstream.KeyValuePut
	if e.Key() == "pools."+r.pool {
		r.vnodes = 0
		var p struct {
			Format int    `json:"format"`
			Hash   string `json:"hash"`
			VNodes int    `json:"vnodes"`
		}
		if !deleted && json.Unmarshal(e.Value(), &p) == nil && p.Format == 3 && p.Hash == "xxhash64" {
			r.vnodes = p.VNodes
		}
		return
	}
	id := strings.TrimPrefix(e.Key(), "members."+r.pool+".")
	delete(r.members, id) // "a member is in the ring iff its key holds a value"
	if deleted {
		return
	}
	var m struct {
		Weight *float64 `json:"weight"`
		Status string   `json:"status"`
		Shed   *float64 `json:"shed"`
	}
	if json.Unmarshal(e.Value(), &m) != nil || m.Weight == nil || *m.Weight <= 0 || *m.Weight > 1000 {
		return // a refused value counts as no value
	}
	if m.Status != "" && m.Status != "draining" {
		return
	}
	shed := 0.0
	if m.Shed != nil {
		if !(*m.Shed > 0 && *m.Shed <= 1) {
			return
		}
		shed = *m.Shed
	}
	r.members[id] = ring.Member{ID: id, Weight: *m.Weight, Draining: m.Status == "draining", Shed: shed}
}

// revision returns the pool revision the reader has applied so far.
func (r *indepReader) revision() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rev
}

// state returns the reader's revision, whether the pool is v3, its members
// sorted by id and a ring built from scratch, once the initial values are in
// and the revision is at least rev.
func (r *indepReader) state(t *testing.T, rev uint64) (uint64, bool, []ring.Member, *ring.Ring) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ch := r.changed
		if r.initDone && r.rev >= rev {
			ms := make([]ring.Member, 0, len(r.members))
			for _, m := range r.members {
				ms = append(ms, m)
			}
			slices.SortFunc(ms, func(a, b ring.Member) int { return cmp.Compare(a.ID, b.ID) })
			cur, vnodes := r.rev, r.vnodes
			r.mu.Unlock()
			if vnodes == 0 {
				return cur, false, ms, nil
			}
			rg, err := ring.New(ring.Config{VirtualNodes: vnodes}, ms...)
			if err != nil {
				t.Fatal(err)
			}
			return cur, true, ms, rg
		}
		r.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("independent reader did not reach revision %d", rev)
		}
	}
}

// v3Env is an embedded server with a bucket for v3 keys.
type v3Env struct {
	js jetstream.JetStream
	kv jetstream.KeyValue
}

func newV3Env(t *testing.T) v3Env {
	t.Helper()
	s := runServer(t)
	js, err := jetstream.New(connect(t, s.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bus.DefaultBucket, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	return v3Env{js: js, kv: kv}
}

// lastRev is the bucket's last revision: the revision of the last write of
// this test's only writer (Delete and Purge do not return theirs).
func (e v3Env) lastRev(t *testing.T) uint64 {
	t.Helper()
	st, err := e.kv.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.(*jetstream.KeyValueBucketStatus).StreamInfo().State.LastSeq
}

func (e v3Env) put(t *testing.T, key, value string) uint64 {
	t.Helper()
	rev, err := e.kv.PutString(context.Background(), key, value)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func (e v3Env) del(t *testing.T, key string, purge bool) uint64 {
	t.Helper()
	var err error
	if purge {
		err = e.kv.Purge(context.Background(), key)
	} else {
		err = e.kv.Delete(context.Background(), key)
	}
	if err != nil {
		t.Fatal(err)
	}
	return e.lastRev(t)
}

func watchCache(t *testing.T, js jetstream.JetStream) *bus.RingCache {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := bus.WatchRing(ctx, js, "", bus.WithRingCacheLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func waitRev(t *testing.T, c *bus.RingCache, rev uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
}

var agreeKeys = fixedKeys(1000)

// fixedKeys returns the keys key-0 ... key-<n-1>.
func fixedKeys(n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = "key-" + strconv.Itoa(i)
	}
	return ks
}

// agree checks that the cache and the independent reader, both at rev, hold
// the same revision, membership and owners of 1,000 keys; false if the pool
// is not v3 at rev (then the cache must have left v3 too).
func agree(t *testing.T, c *bus.RingCache, ind *indepReader, rev uint64, step string) bool {
	t.Helper()
	irev, v3, ms, rg := ind.state(t, rev)
	if !v3 {
		waitFor(t, 10*time.Second, "the cache to leave v3", func() bool { return !c.V3() })
		return false
	}
	waitRev(t, c, rev)
	snap := c.Snapshot()
	doc, crev := c.Ring()
	if !c.V3() || crev != rev || irev != rev {
		t.Fatalf("%s: cache v3 %v at revision %d, independent reader at %d, want %d", step, c.V3(), crev, irev, rev)
	}
	if got := doc.Members(); !slices.Equal(got, ms) {
		t.Fatalf("%s: cache members %v, independent reader %v", step, got, ms)
	}
	if err := doc.Validate(); err != nil {
		t.Fatalf("%s: the cache's document: %v", step, err)
	}
	for _, k := range agreeKeys {
		got, gerr := snap.Get(k)
		want, werr := rg.Get(k)
		if got != want || (gerr == nil) != (werr == nil) {
			t.Fatalf("%s: Get(%q) = %q, %v from the cache, %q, %v from the independent reader", step, k, got, gerr, want, werr)
		}
	}
	return true
}

// TestV3ReadersAgree writes random sequences of creates, updates, deletes
// and purges of v3 keys into a real bucket and checks, after every step
// (a single write, or a burst applied as one batch), that a RingCache and
// the independent reader agree on the revision, the membership and the
// owner of 1,000 keys.
func TestV3ReadersAgree(t *testing.T) {
	ops := 300
	if testing.Short() {
		ops = 60
	}
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			env := newV3Env(t)
			rnd := rand.New(rand.NewPCG(seed, 42))
			ind := startIndepReader(t, env.kv, bus.DefaultPool)
			c := watchCache(t, env.js)
			poolValue := `{"format":3,"hash":"xxhash64","vnodes":150}`
			rev := env.put(t, "pools.default", poolValue)
			agree(t, c, ind, rev, "pool created")
			ids := make([]string, 16)
			for i := range ids {
				ids[i] = fmt.Sprintf("node-%02d", i)
			}
			revs := map[string]uint64{} // last revision of each member key holding a value
			value := func() string {
				w := []string{"0.5", "1", "1", "2", "3"}[rnd.IntN(5)]
				v := `{"weight":` + w
				if rnd.IntN(4) == 0 {
					v += `,"status":"draining"`
				}
				if rnd.IntN(4) == 0 {
					v += `,"shed":` + []string{"0.25", "0.5", "0.1234", "1"}[rnd.IntN(4)]
				}
				if rnd.IntN(40) == 0 {
					v = `{"weight":0}` // refused: counts as no value
				}
				return v + "}"
			}
			checked, sizes := 0, 0
			for i := 0; i < ops; {
				burst := 1
				if rnd.IntN(3) == 0 {
					burst = 2 + rnd.IntN(6)
				}
				var kinds []string
				for range burst {
					id := ids[rnd.IntN(len(ids))]
					key := "members.default." + id
					switch x := rnd.IntN(100); {
					case x < 2: // the pool leaves v3 for one step, or is rewritten
						if rnd.IntN(2) == 0 {
							rev = env.del(t, "pools.default", false)
							kinds = append(kinds, "delete pools")
							env.put(t, "pools.default", poolValue) // back, so the pool is v3 at the end of the burst
						}
						rev = env.put(t, "pools.default", poolValue)
						kinds = append(kinds, "put pools")
					case x < 45:
						if _, ok := revs[key]; !ok {
							r, err := env.kv.Create(context.Background(), key, []byte(value()))
							if err != nil {
								t.Fatal(err)
							}
							rev, revs[key] = r, r
							kinds = append(kinds, "create "+id)
							break
						}
						fallthrough
					case x < 75:
						if last, ok := revs[key]; ok {
							r, err := env.kv.Update(context.Background(), key, []byte(value()), last)
							if err != nil {
								t.Fatal(err)
							}
							rev, revs[key] = r, r
							kinds = append(kinds, "update "+id)
							break
						}
						fallthrough
					default:
						rev = env.del(t, key, x >= 90)
						delete(revs, key)
						kinds = append(kinds, "delete/purge "+id)
					}
				}
				i += burst
				if agree(t, c, ind, rev, fmt.Sprintf("op %d (%s)", i, strings.Join(kinds, ", "))) {
					checked++
					sizes += len(c.Document().Nodes)
				}
			}
			// Most steps end v3 (the pool key leaves for a moment only), with
			// a membership large enough to mean something.
			if checked < ops/4 || sizes < checked*4 {
				t.Fatalf("%d steps compared, %d members on average", checked, sizes/max(checked, 1))
			}
			t.Logf("%d steps compared, %d members on average", checked, sizes/checked)
		})
	}
}

// TestV3GoldenSequenceOnBucket replays subjects.md's golden sequence of the
// v3 layout on a real bucket: each operation gets the revision of its row,
// and a RingCache holds the row's document and owners.
func TestV3GoldenSequenceOnBucket(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "subjects.md"))
	if err != nil {
		t.Fatal(err)
	}
	md := string(data)
	md = md[strings.Index(md, "### Golden sequence (v3)"):]
	md = md[:strings.Index(md[4:], "\n## ")+4]
	var ops, owners [][]string
	var keys []string
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "| revision | user-1") {
			for _, k := range strings.Split(strings.Trim(line, "| "), " | ")[1:] {
				keys = append(keys, k)
			}
		}
		if len(line) < 3 || line[0] != '|' || line[2] < '0' || line[2] > '9' {
			continue
		}
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		for i := range cells {
			cells[i] = strings.Trim(cells[i], "`")
		}
		if len(cells) == 6 && (cells[1] == "create" || cells[1] == "update" || cells[1] == "delete" || cells[1] == "purge" || cells[1] == "put") {
			ops = append(ops, cells)
		} else {
			owners = append(owners, cells)
		}
	}
	if len(ops) < 10 || len(owners) != len(ops) || len(keys) < 5 {
		t.Fatalf("subjects.md's golden sequence: %d operations, %d owner rows, keys %v", len(ops), len(owners), keys)
	}
	env := newV3Env(t)
	c := watchCache(t, env.js)
	ctx := context.Background()
	last := map[string]uint64{}
	for i, op := range ops {
		want, _ := strconv.ParseUint(op[0], 10, 64)
		var rev uint64
		var err error
		switch key, value := op[2], []byte(op[3]); op[1] {
		case "create":
			rev, err = env.kv.Create(ctx, key, value)
		case "update":
			rev, err = env.kv.Update(ctx, key, value, last[key])
		case "put":
			rev, err = env.kv.Put(ctx, key, value)
		case "delete":
			rev = env.del(t, key, false)
		case "purge":
			rev = env.del(t, key, true)
		}
		if err != nil {
			t.Fatalf("row %d: %v", want, err)
		}
		last[op[2]] = rev
		if rev != want {
			t.Fatalf("row %d: the bucket gave revision %d", want, rev)
		}
		waitRev(t, c, rev)
		doc, crev := c.Ring()
		b, _ := doc.Encode()
		nodes := strings.TrimSuffix(string(b)[strings.Index(string(b), `"nodes":`)+len(`"nodes":`):], "}")
		if crev != rev || strconv.Itoa(doc.Format) != op[4] || nodes != op[5] {
			t.Fatalf("row %d: cache at %d holds format %d %s, subjects.md says format %s %s", want, crev, doc.Format, nodes, op[4], op[5])
		}
		for j, k := range keys {
			got, err := c.Get(k)
			if err != nil {
				got = "(empty)"
			}
			if got != owners[i][j+1] {
				t.Fatalf("row %d: Get(%q) = %s, subjects.md says %s", want, k, got, owners[i][j+1])
			}
		}
	}
}

// TestRingCacheV3 follows hand-written v3 keys: joins, changes, leaves,
// WaitRevision, a cache restarted mid-stream, and the switch from the
// format-1/2 document to v3 and back.
func TestRingCacheV3(t *testing.T) {
	env := newV3Env(t)
	ctx := context.Background()
	// A format-1 document first: the pool is not v3.
	docRev := env.put(t, "ring", `{"format":1,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"old-1","weight":1},{"id":"old-2","weight":1}]}`)
	c := watchCache(t, env.js)
	if c.V3() || c.Revision() != docRev || len(c.Document().Nodes) != 2 {
		t.Fatalf("before v3: v3 %v, revision %d, %+v", c.V3(), c.Revision(), c.Document())
	}
	// Member keys before the pool key change nothing for readers.
	env.put(t, "members.default.a", `{"weight":1}`)
	env.put(t, "members.default.b", `{"weight":2}`)
	marker := env.put(t, "ring.marker", `x`) // a key the cache does not follow, to order the check
	_ = marker
	if c.V3() {
		t.Fatal("the cache went v3 with no pools.default")
	}
	// Routers upgraded: pools.default appears, the cache switches.
	rev := env.put(t, "pools.default", `{"format":3,"hash":"xxhash64","vnodes":150}`)
	waitRev(t, c, rev)
	waitFor(t, 10*time.Second, "the cache to switch to v3", c.V3)
	if got := nodeIDs(c.Document()); got != "a,b" || c.Revision() != rev {
		t.Fatalf("after the switch: members %s at %d, want a,b at %d", got, c.Revision(), rev)
	}
	if allocs := testing.AllocsPerRun(200, func() { _, _ = c.Get("user-42") }); allocs != 0 {
		t.Fatalf("RingCache.Get on a v3 pool allocates %v times", allocs)
	}
	// The document is no longer followed, even if it is still written.
	env.put(t, "ring", `{"format":1,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"old-1","weight":1}]}`)

	// WaitRevision blocks until a later write arrives.
	waitErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		waitErr <- c.WaitRevision(ctx, rev+3)
	}()
	joinRev := env.put(t, "members.default.c", `{"weight":1,"shed":0.5}`)
	select {
	case err := <-waitErr:
		t.Fatalf("WaitRevision(%d) returned %v at revision %d", rev+3, err, joinRev)
	default:
	}
	changeRev := env.put(t, "members.default.a", `{"weight":1,"status":"draining"}`)
	if err := <-waitErr; err != nil {
		t.Fatal(err)
	}
	if c.Revision() < changeRev {
		t.Fatalf("revision %d after WaitRevision(%d)", c.Revision(), changeRev)
	}
	d := c.Document()
	if d.Format != bus.DocumentFormatShed || nodeIDs(d) != "a,b,c" {
		t.Fatalf("after a join and a change: %+v", d)
	}
	if n, _ := d.Node("a"); n.Status != bus.StatusDraining {
		t.Fatalf("a is %+v, want draining", n)
	}
	// A cache started now answers the same at once.
	late := watchCache(t, env.js)
	if late.Revision() != c.Revision() || !late.Document().Equal(d) || !late.V3() {
		t.Fatalf("late cache at %d with %+v, running cache at %d with %+v", late.Revision(), late.Document(), c.Revision(), d)
	}
	// WaitRevision for a revision from before a late start: at once.
	short, cancel := context.WithTimeout(ctx, time.Millisecond)
	if err := late.WaitRevision(short, 1); err != nil {
		t.Fatalf("late WaitRevision(1): %v", err)
	}
	cancel()
	_ = late.Close()

	// Leaves: delete and purge. The cache restarts mid-stream: stopped
	// before the leaves, started after them.
	_ = c.Close()
	env.del(t, "members.default.b", false)
	leaveRev := env.del(t, "members.default.c", true)
	c2 := watchCache(t, env.js)
	if c2.Revision() != leaveRev || nodeIDs(c2.Document()) != "a" || !c2.V3() {
		t.Fatalf("restarted cache: %s at %d, want a at %d", nodeIDs(c2.Document()), c2.Revision(), leaveRev)
	}
	// A refused member value: the member counts as absent and Err says so.
	badRev := env.put(t, "members.default.a", `{"weight":-1}`)
	waitRev(t, c2, badRev)
	if _, err := c2.Get("k"); !errors.Is(err, bus.ErrNoNodes) {
		t.Fatalf("Get with the only member refused = %v, want ErrNoNodes", err)
	}
	if err := c2.Err(); !errors.Is(err, bus.ErrInvalidEntry) {
		t.Fatalf("Err = %v, want ErrInvalidEntry", err)
	}
	fixRev := env.put(t, "members.default.a", `{"weight":1}`)
	waitRev(t, c2, fixRev)
	if err := c2.Err(); err != nil {
		t.Fatalf("Err after the fix = %v", err)
	}
	// A pool value of an unknown format: keep the last good ring, say why.
	env.put(t, "pools.default", `{"format":4,"hash":"xxhash64","vnodes":150}`)
	waitFor(t, 10*time.Second, "Err to report format 4", func() bool { return errors.Is(c2.Err(), bus.ErrInvalidEntry) })
	if c2.Revision() != fixRev || nodeIDs(c2.Document()) != "a" {
		t.Fatalf("after format 4: %s at %d, want the last good ring a at %d", nodeIDs(c2.Document()), c2.Revision(), fixRev)
	}
	// pools.default deleted: back to the document, which the cache reads
	// again.
	env.put(t, "pools.default", `{"format":3,"hash":"xxhash64","vnodes":150}`)
	waitFor(t, 10*time.Second, "Err to clear", func() bool { return c2.Err() == nil })
	env.del(t, "pools.default", false)
	waitFor(t, 10*time.Second, "the cache to leave v3", func() bool { return !c2.V3() })
	waitFor(t, 10*time.Second, "the document to answer", func() bool { return nodeIDs(c2.Document()) == "old-1" })
	if got, err := c2.Get("k"); err != nil || got != "old-1" {
		t.Fatalf("Get from the document = %q, %v", got, err)
	}
}

func nodeIDs(d bus.RingDocument) string {
	ids := make([]string, len(d.Nodes))
	for i, n := range d.Nodes {
		ids[i] = n.ID
	}
	return strings.Join(ids, ",")
}

// TestRingCacheV3BucketRecreated: the bucket is deleted and created anew
// (revisions start again from 1) with other v3 members; the cache follows
// the new bucket rather than waiting for revisions it will never see.
func TestRingCacheV3BucketRecreated(t *testing.T) {
	env := newV3Env(t)
	env.put(t, "pools.default", `{"format":3,"hash":"xxhash64","vnodes":150}`)
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		env.put(t, "members.default."+id, `{"weight":1}`)
	}
	c := watchCache(t, env.js)
	if got := nodeIDs(c.Document()); got != "a,b,c,d,e" || !c.V3() {
		t.Fatalf("before: %s", got)
	}
	ctx := context.Background()
	if err := env.js.DeleteKeyValue(ctx, bus.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	// The server removes the old stream's store after the delete returns:
	// a create at once can meet it (error 10049, "error creating store for
	// stream", seen once in CI).
	var kv jetstream.KeyValue
	var err error
	waitFor(t, 10*time.Second, "the bucket created anew", func() bool {
		kv, err = env.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bus.DefaultBucket, History: 1})
		return err == nil
	})
	env.kv = kv
	env.put(t, "pools.default", `{"format":3,"hash":"xxhash64","vnodes":150}`)
	rev := env.put(t, "members.default.x", `{"weight":1}`)
	defer func() { t.Logf("cache: %s at %d, v3 %v, err %v", nodeIDs(c.Document()), c.Revision(), c.V3(), c.Err()) }()
	waitFor(t, 20*time.Second, "the cache to follow the new bucket", func() bool {
		return nodeIDs(c.Document()) == "x" && c.Revision() == rev
	})
}

// TestRingCacheV3ServerRestart: the server restarts on its store; the
// cache's v3 watch comes back by itself (there is no periodic re-read to
// hide a watch that did not) and applies a change made afterwards, in
// well under the resync period.
func TestRingCacheV3ServerRestart(t *testing.T) {
	port, dir := freePort(t), t.TempDir()
	opts := func(o *server.Options) { o.Port, o.StoreDir = port, dir }
	s := runServer(t, opts)
	js, err := jetstream.New(connect(t, s.ClientURL(), reconnecting()...))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: bus.DefaultBucket, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	env := v3Env{js: js, kv: kv}
	env.put(t, "pools.default", `{"format":3,"hash":"xxhash64","vnodes":150}`)
	env.put(t, "members.default.a", `{"weight":1}`)
	c := watchCache(t, js)

	s.Shutdown()
	s.WaitForShutdown()
	runServer(t, opts)
	var rev uint64
	waitFor(t, 10*time.Second, "a write after the restart", func() bool {
		rev, err = kv.PutString(context.Background(), "members.default.b", `{"weight":1}`)
		return err == nil
	})
	t0 := time.Now()
	waitRev(t, c, rev)
	if took := time.Since(t0); took > cacheResyncBound {
		t.Fatalf("the cache took %v to apply a change after the restart", took)
	}
	if got := nodeIDs(c.Document()); got != "a,b" {
		t.Fatalf("after the restart: %s", got)
	}
}

// cacheResyncBound is below RingCache's 5 s document re-read: a v3 cache
// must not need one.
const cacheResyncBound = 4 * time.Second

// BenchmarkV3CacheChange measures, on a real bucket holding a v3 pool of n
// members, how long one member change takes from the write to a RingCache
// holding it (a join and a leave in turn), and reports how long a cache
// started on that pool took to be ready and how long a burst of n joins
// took to reach a running cache.
func BenchmarkV3CacheChange(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			s := runServer(b)
			js, err := jetstream.New(connect(b, s.ClientURL()))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bus.DefaultBucket, History: 1})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := kv.PutString(ctx, "pools.default", `{"format":3,"hash":"xxhash64","vnodes":150}`); err != nil {
				b.Fatal(err)
			}
			running, err := bus.WatchRing(ctx, js, "", bus.WithRingCacheLogger(testLogger(b)))
			if err != nil {
				b.Fatal(err)
			}
			defer running.Close()
			// The burst: n joins written as fast as one writer can.
			t0 := time.Now()
			var last uint64
			for i := range n {
				if last, err = kv.PutString(ctx, fmt.Sprintf("members.default.node-%05d", i), `{"weight":1}`); err != nil {
					b.Fatal(err)
				}
			}
			written := time.Since(t0)
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			err = running.WaitRevision(wctx, last)
			cancel()
			if err != nil {
				b.Fatal(err)
			}
			burst := time.Since(t0)
			t0 = time.Now()
			fresh, err := bus.WatchRing(ctx, js, "", bus.WithRingCacheLogger(testLogger(b)))
			if err != nil {
				b.Fatal(err)
			}
			ready := time.Since(t0)
			if fresh.Snapshot().Len() != n || fresh.Revision() != last {
				b.Fatalf("a fresh cache holds %d members at %d, want %d at %d", fresh.Snapshot().Len(), fresh.Revision(), n, last)
			}
			_ = fresh.Close()
			b.ResetTimer() // (which also drops metrics reported before it)
			for i := range b.N {
				var rev uint64
				if i%2 == 0 {
					rev, err = kv.PutString(ctx, "members.default.zz", `{"weight":1}`)
				} else {
					err = kv.Delete(ctx, "members.default.zz")
					rev = last + uint64(i) + 1 // one writer: every write takes the next revision
				}
				if err != nil {
					b.Fatal(err)
				}
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err = running.WaitRevision(wctx, rev)
				cancel()
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(burst.Milliseconds()), "burst-ms")
			b.ReportMetric(float64(written.Milliseconds()), "burst-written-ms")
			b.ReportMetric(float64(ready.Microseconds())/1000, "ready-ms")
		})
	}
}

// TestRingCacheV3Pool: a cache of pool "cache" follows pools.cache and
// members.cache.*, and nothing of the default pool.
func TestRingCacheV3Pool(t *testing.T) {
	env := newV3Env(t)
	env.put(t, "pools.default", `{"format":3,"hash":"xxhash64","vnodes":150}`)
	env.put(t, "members.default.d1", `{"weight":1}`)
	env.put(t, "pools.cache", `{"format":3,"hash":"xxhash64","vnodes":40}`)
	env.put(t, "members.cache.c1", `{"weight":1}`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := bus.WatchRing(ctx, env.js, "", bus.WithPool("cache"), bus.WithRingCacheLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	env.put(t, "members.default.d2", `{"weight":1}`)
	rev := env.put(t, "members.cache.c2", `{"weight":2}`)
	waitRev(t, c, rev)
	d := c.Document()
	if got := nodeIDs(d); got != "c1,c2" || d.VNodes != 40 || !c.V3() || c.Revision() != rev {
		t.Fatalf("pool cache: %s, vnodes %d, v3 %v, revision %d (want c1,c2, 40, true, %d)", got, d.VNodes, c.V3(), c.Revision(), rev)
	}
	if p := c.Snapshot().Points(); p != 40+80 {
		t.Fatalf("%d points, want 120", p)
	}
}

// TestRingCacheV3ReadyWithAllInitialValues: a cache started on a pool of
// 3,000 members answers, as soon as WatchRing returns, from all of them at
// the pool's revision, never from part of the watch's initial values.
func TestRingCacheV3ReadyWithAllInitialValues(t *testing.T) {
	env := newV3Env(t)
	env.put(t, "pools.default", `{"format":3,"hash":"xxhash64","vnodes":150}`)
	var last uint64
	for i := range 3000 {
		last = env.put(t, fmt.Sprintf("members.default.n%04d", i), `{"weight":1}`)
	}
	for range 3 {
		c := watchCache(t, env.js)
		if n, rev := c.Snapshot().Len(), c.Revision(); n != 3000 || rev != last || !c.V3() {
			t.Fatalf("a cache ready with %d members at revision %d, want 3000 at %d", n, rev, last)
		}
		_ = c.Close()
	}
}
