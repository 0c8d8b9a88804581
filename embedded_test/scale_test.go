package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
	"github.com/vmihailenco/msgpack/v5"
)

// BenchmarkScale measures one router process against a fleet of N members
// (DESIGN.md, "Scale"). It takes minutes per size, so run it alone and once:
//
//	go test -run '^$' -bench BenchmarkScale -benchtime 1x -timeout 30m ./embedded_test
//
// Environment:
//
//	NATSROUTE_SCALE_N=50000          sizes to run, comma-separated (default 1000,10000)
//	NATSROUTE_SCALE_CPUPROFILE=dir   write the router's CPU profile of each phase there
//
// The router runs in a child process (the test binary re-run behind
// scaleProcEnv) so that its RSS and CPU exclude the embedded server and the
// load generator, which share the parent. Everything shares the machine's
// cores, so on a small machine the figures are noisy and pessimistic.
func BenchmarkScale(b *testing.B) {
	scalePools = 0
	if s := os.Getenv("NATSROUTE_SCALE_POOLS"); s != "" {
		var err error
		if scalePools, err = strconv.Atoi(s); err != nil || scalePools < 1 || scalePools > 1000 {
			b.Fatalf("NATSROUTE_SCALE_POOLS=%q: want 1 to 1000", s)
		}
	}
	sizes := sizesFromEnv(b, "NATSROUTE_SCALE_N")
	results := map[int]scaleResult{}
	for _, n := range sizes {
		name := fmt.Sprintf("members=%d", n)
		if scalePools > 0 {
			name += fmt.Sprintf("/pools=%d", scalePools)
		}
		b.Run(name, func(b *testing.B) {
			res := runScale(b, n)
			res.report(b)
			results[n] = res
			printScaleTable([]scaleResult{res})
		})
	}
	if len(results) > 1 {
		var all []scaleResult
		for _, n := range sizes {
			if r, ok := results[n]; ok {
				all = append(all, r)
			}
		}
		printScaleTable(all)
	}
}

// sizesFromEnv returns the fleet sizes a benchmark runs: env's
// comma-separated list, or 1,000 and 10,000.
func sizesFromEnv(b *testing.B, env string) []int {
	s := os.Getenv(env)
	if s == "" {
		return []int{1000, 10000}
	}
	var sizes []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 10 {
			b.Fatalf("%s=%q: want sizes of at least 10, comma-separated", env, s)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

const (
	scaleTTL          = 10 * time.Second       // the router's MemberTTL
	scaleHeartbeat    = 5 * time.Second        // every member reports this often
	scaleIngestTotal  = 300_000                // reports in the ingest phase (rounded up to whole rounds)
	scalePublishers   = 4                      // connections publishing the ingest phase
	scaleRequesters   = 4                      // route.request calls in flight in phase 3
	scaleRequestMin   = 10 * time.Second       // phase 3 lasts at least this long
	scaleJoins        = 10                     // single joins timed in phase 6
	scaleBigPayload   = 8 << 20                // max_payload above scaleBigFleet members
	scaleBigFleet     = 30_000                 // the ring document nears 1 MiB at ~35,000
	scaleSilentWait   = scaleTTL + time.Minute // a silent member must be gone by then
	scaleJoinWait     = 20 * time.Second       // a single join must reach a RingCache by then
	scaleStatsPoll    = 100 * time.Millisecond
	scaleIngestStall  = time.Minute // ingest fails after this long without progress
	scaleIngestBudget = 15 * time.Minute
)

// scaleResult holds one size's figures.
type scaleResult struct {
	members    int
	maxPayload int64

	docBytes   int           // the ring document with every member
	joinBurst  time.Duration // first report of N nodes → KV document has all N
	burstCPU   time.Duration // router CPU during the burst
	burstWrite uint64        // KV writes it took

	ingestReports  uint64
	ingestRate     float64 // accepted / (first publish → last accepted)
	publishRate    float64 // how fast the generator published them
	ingestDropped  uint64
	ingestRejected uint64
	ingestCPUPer   time.Duration // router CPU per report
	statsCost      time.Duration // one Router.Stats call, which the ingest wait polls

	requests     int
	reqErrors    int
	reqRate      float64
	reqP50       time.Duration
	reqP99       time.Duration
	hbSent       int64             // heartbeats sent during the request phase
	hbAccepted   uint64            // and accepted by the router in it
	steadyProbes uint64            // probes the router sent in the request phase
	probeRate    float64           // and per second
	probes       map[string]uint64 // the router's probes by result, whole run
	downs        uint64            // members probes took down, whole run
	answered     int64             // probes the fleet's responder answered, whole run
	silentLeave  time.Duration     // last report → gone from the KV document
	silentMissed bool              // not gone within scaleSilentWait
	leaveBurst   time.Duration     // every member says leaving → KV document has none
	leaveCPU     time.Duration     // router CPU during it
	leaveWrite   uint64            // KV writes it took
	joinsTimed   int               // single joins timed (the rest missed scaleJoinWait)
	joinToKV     time.Duration     // median over the joins timed
	joinToCache  time.Duration     // median
	joinCacheMax time.Duration

	rssMB, peakMB float64
	kvWrites      uint64
	kvErrors      uint64
}

// scaleRun is one size's fleet, router process and observers.
type scaleRun struct {
	b        *testing.B
	n        int
	url      string
	router   *childProc
	doc      *docWatch
	ids      []string
	subjects []string
	pubs     []*nats.Conn // for the burst, the ingest phase and single joins
	hb       *heartbeats
	answered *atomic.Int64 // probes answered for the fleet
	profiles string        // where CPU profiles go; "" for none
	res      scaleResult
}

// runScale runs the phases in order (the numbers are those of the issue):
// each leaves every member alive and the router caught up for the next.
func runScale(b *testing.B, n int) scaleResult {
	s := runServer(b, func(o *server.Options) {
		if n > scaleBigFleet {
			o.MaxPayload = scaleBigPayload
		}
	})
	r := &scaleRun{b: b, n: n, url: s.ClientURL(), profiles: os.Getenv("NATSROUTE_SCALE_CPUPROFILE")}
	r.res.members = n
	r.router = startScaleProc(b, r.url, scaleTTL)
	docConn := connect(b, r.url)
	r.res.maxPayload = docConn.MaxPayload()
	r.doc = watchDoc(b, docConn)
	r.ids, r.subjects = make([]string, n), make([]string, n)
	for i := range r.ids {
		r.ids[i] = fmt.Sprintf("node-%05d", i)
		r.subjects[i] = bus.HealthSubject(r.ids[i])
	}
	scaleSilent = r.ids[n/2]
	r.answered = answerProbes(b, connect(b, r.url))
	for range scalePublishers {
		r.pubs = append(r.pubs, connect(b, r.url))
	}
	r.hb = &heartbeats{nc: connect(b, r.url), ids: r.ids, seq: make([]uint64, n)}
	b.Cleanup(r.hb.stop)

	r.joinBurst()           // 1
	r.ingest()              // 2
	r.requestsWhileSilent() // 3 and 4
	r.singleJoins()         // 6
	// 5: the router process's memory, now and at its peak, heartbeats
	// running (the leave burst stops them).
	r.res.rssMB, r.res.peakMB = r.router.memory(b)
	heapProfile := ""
	if r.profiles != "" {
		heapProfile = filepath.Join(r.profiles, fmt.Sprintf("scale-%d-heap.pprof", n))
	}
	r.logf("router memory: RSS %.1f MB (peak %.1f MB); %s", r.res.rssMB, r.res.peakMB, r.router.heap(b, heapProfile))
	r.leaveBurst() // 7
	end := r.router.stats(b)
	r.res.kvWrites, r.res.kvErrors = end.Stats.KVWrites, end.Stats.KVErrors
	r.res.probes, r.res.downs, r.res.answered = end.Stats.Probes, end.Stats.MembersDown, r.answered.Load()
	r.logf("probes, whole run: %v (the fleet's responder answered %d); members down %d", r.res.probes, r.res.answered, r.res.downs)
	return r.res
}

// answerProbes answers the probes of the fleet's probing members (see
// scaleHealth) as their Reporters would, with their current health, so
// that a probe of a live member never takes it down; it counts them.
func answerProbes(b testing.TB, nc *nats.Conn) *atomic.Int64 {
	b.Helper()
	var n atomic.Int64
	_, err := nc.Subscribe(bus.ProbeSubject("*"), func(m *nats.Msg) {
		id := strings.TrimSuffix(strings.TrimPrefix(m.Subject, "health."), ".probe")
		h := scaleHealth(id)
		if !h.Probe {
			return // not one of ours: let it time out
		}
		data, err := bus.EncodeHealth(id, h, bus.Msgpack)
		if err == nil {
			err = m.Respond(data)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "scale: probe answer for %s: %v\n", id, err)
			return
		}
		n.Add(1)
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := nc.FlushTimeout(time.Minute); err != nil {
		b.Fatal(err)
	}
	return &n
}

func (r *scaleRun) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "scale members=%d: %s\n", r.n, fmt.Sprintf(format, args...))
}

// profile starts the router's CPU profile of a phase, if asked for.
func (r *scaleRun) profile(phase string) (stop func()) {
	if r.profiles == "" {
		return func() {}
	}
	return r.router.profile(r.b, filepath.Join(r.profiles, fmt.Sprintf("scale-%d-%s.pprof", r.n, phase)))
}

// joinBurst publishes the first report of every node, as fast as one
// connection publishes them, and times it until the KV document lists them
// all. Heartbeats then start at the fleet's pace, as a real fleet's would:
// without them, members reported early in a long burst would expire.
func (r *scaleRun) joinBurst() {
	first := make([][]byte, r.n)
	for i := range first {
		r.hb.seq[i]++
		first[i] = encodeHealth(r.b, r.ids[i], r.hb.seq[i])
	}
	limit := 2*time.Minute + time.Duration(r.n)*20*time.Millisecond
	br := r.burst("burst", first, func() { r.hb.start(r.b, -1) }, limit,
		fmt.Sprintf("the KV document to list all %d members after the join burst", r.n),
		func(d *docState) bool { return len(d.doc.Nodes) >= r.n })
	r.res.joinBurst, r.res.docBytes, r.res.burstCPU, r.res.burstWrite = br.took, br.doc.size, br.cpu, br.writes
	r.logf("join burst: %v to the KV document (%d bytes, %d writes)", r.res.joinBurst.Round(time.Millisecond), r.res.docBytes, r.res.burstWrite)
}

// burstResult is what one burst took.
type burstResult struct {
	took   time.Duration // first publish → the document met the condition
	doc    *docState     // the document then
	cpu    time.Duration // router CPU meanwhile
	writes uint64        // KV writes meanwhile
}

// burst publishes msgs (msgs[i] on node i's subject) as fast as one
// connection does, calls then, and times it until the KV document meets
// done (the benchmark fails past limit), with the router's CPU profiled as
// phase if asked for.
func (r *scaleRun) burst(phase string, msgs [][]byte, then func(), limit time.Duration, what string, done func(*docState) bool) burstResult {
	b := r.b
	before := r.router.stats(b)
	stopProfile := r.profile(phase)
	t0 := time.Now()
	for i := range msgs {
		if err := r.pubs[0].Publish(r.subjects[i], msgs[i]); err != nil {
			b.Fatal(err)
		}
	}
	flush(b, r.pubs[0])
	then()
	at, d, ok := r.doc.wait(limit, what, done)
	if !ok {
		b.Fatalf("%s: not within %v: %s", phase, limit, what)
	}
	stopProfile()
	after := r.router.stats(b)
	return burstResult{took: at.Sub(t0), doc: d, cpu: time.Duration(after.CPU-before.CPU) * time.Microsecond, writes: after.Stats.KVWrites - before.Stats.KVWrites}
}

// ingest publishes whole rounds of heartbeats of every node (same weight
// and status: no ring change), scaleIngestTotal in all, from several
// connections, each node always on the same one so that its seq only rises.
// It polls the router's counters until every report is accounted for
// (accepted, rejected or dropped).
func (r *scaleRun) ingest() {
	b, hb := r.b, r.hb
	hb.stop()
	type msg struct {
		subject string
		data    []byte
	}
	batches := make([][]msg, scalePublishers)
	rounds := (scaleIngestTotal + r.n - 1) / r.n
	for range rounds {
		for i := range r.ids {
			hb.seq[i]++
			p := i % scalePublishers
			batches[p] = append(batches[p], msg{r.subjects[i], encodeHealth(b, r.ids[i], hb.seq[i])})
		}
	}
	total := uint64(rounds * r.n)
	before := r.router.stats(b)
	stopProfile := r.profile("ingest")
	var wg sync.WaitGroup
	flushed := make([]time.Time, scalePublishers) // when each publisher had sent all
	pubErrs := make([]error, scalePublishers)
	t0 := time.Now()
	for p, batch := range batches {
		wg.Go(func() {
			for _, m := range batch {
				if pubErrs[p] = r.pubs[p].Publish(m.subject, m.data); pubErrs[p] != nil {
					return
				}
			}
			pubErrs[p] = r.pubs[p].FlushTimeout(time.Minute)
			flushed[p] = time.Now()
		})
	}
	var last scaleProcReply
	var done time.Time
	progress, progressAt := uint64(0), time.Now()
	for {
		time.Sleep(scaleStatsPoll)
		last, done = r.router.stats(b), time.Now()
		got := last.processed(before)
		if got >= total {
			break
		}
		if got > progress {
			progress, progressAt = got, done
		}
		if done.Sub(progressAt) > scaleIngestStall || done.Sub(t0) > scaleIngestBudget {
			wg.Wait()
			b.Fatalf("ingest: %d of %d reports accounted for after %v (stalled %v); router stats %+v",
				got, total, done.Sub(t0).Round(time.Second), done.Sub(progressAt).Round(time.Second), last.Stats)
		}
	}
	wg.Wait()
	stopProfile()
	if err := errors.Join(pubErrs...); err != nil {
		b.Fatalf("ingest publish: %v", err)
	}
	accepted := last.Stats.ReportsAccepted - before.Stats.ReportsAccepted
	res := &r.res
	res.ingestReports = total
	res.ingestRate = float64(accepted) / done.Sub(t0).Seconds()
	res.publishRate = float64(total) / slices.MaxFunc(flushed, time.Time.Compare).Sub(t0).Seconds()
	res.ingestDropped = last.Stats.HealthDropped - before.Stats.HealthDropped
	res.ingestRejected = last.processed(before) - accepted - res.ingestDropped
	res.ingestCPUPer = time.Duration(last.CPU-before.CPU) * time.Microsecond / time.Duration(total)
	res.statsCost = time.Duration(last.TookUS) * time.Microsecond
	r.logf("ingest: %d reports in %v: %.0f reports/s accepted (published at %.0f/s), %d dropped, %d rejected",
		total, done.Sub(t0).Round(time.Millisecond), res.ingestRate, res.publishRate, res.ingestDropped, res.ingestRejected)
}

// requestsWhileSilent keeps scaleRequesters route.request calls in flight
// while every node reports every 5 s, spread evenly, except one, which
// reports once more and then never again; it times that node's leaving.
// The requests run until it has left, and for at least scaleRequestMin.
func (r *scaleRun) requestsWhileSilent() {
	b, hb, res := r.b, r.hb, &r.res
	victim := r.n / 2
	before := r.router.stats(b)
	hb.sent.Store(0)
	victimLast := hb.start(b, victim)
	stopProfile := r.profile("steady")
	ctx, stopRequests := context.WithCancel(context.Background())
	reqs := startRequests(ctx, b, connect(b, r.url))
	b.Cleanup(func() { stopRequests(); reqs.wait() }) // if a wait below fails
	t0 := time.Now()
	var lastReport time.Time
	select {
	case lastReport = <-victimLast:
	case <-time.After(2 * scaleHeartbeat):
		b.Fatalf("the heartbeat loop did not send %s's last report within %v", r.ids[victim], 2*scaleHeartbeat)
	}
	what := fmt.Sprintf("%s, silent since %s, to leave the KV document", r.ids[victim], lastReport.Format("15:04:05.000"))
	at, _, ok := r.doc.wait(time.Until(lastReport.Add(scaleSilentWait)), what,
		func(d *docState) bool { _, member := d.member(r.ids[victim]); return !member })
	res.silentLeave, res.silentMissed = at.Sub(lastReport), !ok
	if wait := scaleRequestMin - time.Since(t0); wait > 0 {
		time.Sleep(wait) // the request phase has a fixed minimum length
	}
	stopRequests()
	lat, errs := reqs.wait()
	stopProfile()
	took := time.Since(t0)
	after := r.router.stats(b)
	res.hbSent, res.hbAccepted = hb.sent.Load(), after.Stats.ReportsAccepted-before.Stats.ReportsAccepted
	res.steadyProbes = probesSent(after.Stats.Probes) - probesSent(before.Stats.Probes)
	res.probeRate = float64(res.steadyProbes) / took.Seconds()
	res.requests, res.reqErrors = len(lat)+errs, errs
	res.reqRate = float64(res.requests) / took.Seconds()
	if len(lat) > 0 {
		slices.Sort(lat)
		res.reqP50, res.reqP99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	r.logf("requests: %d in %v (%d errors), p50 %v p99 %v; silent member gone after %s (TTL %v); router accepted %d of %d heartbeats sent meanwhile; %d probes sent (%.2f/s)",
		res.requests, took.Round(time.Millisecond), errs, res.reqP50, res.reqP99, res.silentText(), scaleTTL, res.hbAccepted, res.hbSent, res.steadyProbes, res.probeRate)
}

// probesSent counts the probes a router sent (rate_limited counts a due
// probe that waited, not a probe).
func probesSent(p map[string]uint64) uint64 {
	return p["answered"] + p["no_responders"] + p["timeout"] + p["error"]
}

// singleJoins times scaleJoins new nodes joining one at a time, spaced
// wider than the router's write window, heartbeats still running: until a
// RingCache in this process routes to the node, and until the KV document
// (the watch in this process) lists it. It stops at the first join that
// misses scaleJoinWait: later ones would queue behind it.
func (r *scaleRun) singleJoins() {
	b, res := r.b, &r.res
	js, err := jetstream.New(connect(b, r.url))
	if err != nil {
		b.Fatal(err)
	}
	opts := []bus.RingCacheOption{bus.WithRingCacheLogger(testLogger(b))}
	if p := scalePool("join"); p != "" {
		opts = append(opts, bus.WithPool(p))
	}
	cache, err := bus.WatchRing(context.Background(), js, "", opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer cache.Close()
	var toKV, toCache []time.Duration
	for j := range scaleJoins {
		id := fmt.Sprintf("join-%02d", j)
		data := encodeHealth(b, id, 1)
		time.Sleep(2 * router.DefaultCoalesce) // spaced: each join is a lone change
		t0 := time.Now()
		if err := r.pubs[0].Publish(bus.HealthSubject(id), data); err != nil {
			b.Fatal(err)
		}
		seen, ok := waitCacheMember(cache, id, scaleJoinWait)
		if !ok {
			break
		}
		at, _, ok := r.doc.wait(time.Second, id+" in the KV document (the cache had it)", func(d *docState) bool { _, ok := d.member(id); return ok })
		if !ok {
			break
		}
		toCache, toKV = append(toCache, seen.Sub(t0)), append(toKV, at.Sub(t0))
	}
	res.joinsTimed = len(toCache)
	if len(toCache) > 0 {
		slices.Sort(toKV)
		slices.Sort(toCache)
		res.joinToKV, res.joinToCache, res.joinCacheMax = toKV[len(toKV)/2], toCache[len(toCache)/2], toCache[len(toCache)-1]
	}
	r.logf("%d of %d joins timed: → KV median %v, → RingCache median %v, max %v", res.joinsTimed, scaleJoins, res.joinToKV, res.joinToCache, res.joinCacheMax)
}

// leaveBurst has every member say leaving as fast as one connection
// publishes it (heartbeats stopped: a zone outage, or a deploy whose
// Reporters close together), and times it until the KV document lists no
// member of the fleet. The TTL is far off: only the leaves can do it.
func (r *scaleRun) leaveBurst() {
	r.hb.stop()
	leave := make([][]byte, r.n)
	for i := range leave {
		r.hb.seq[i]++
		h := scaleHealth(r.ids[i])
		h.Seq, h.Status = r.hb.seq[i], bus.StatusLeaving
		var err error
		if leave[i], err = bus.EncodeHealth(r.ids[i], h, bus.Msgpack); err != nil {
			r.b.Fatal(err)
		}
	}
	fleet := func(d *docState) int {
		n := 0
		for _, m := range d.doc.Nodes {
			if strings.HasPrefix(m.ID, "node-") {
				n++
			}
		}
		return n
	}
	br := r.burst("leave", leave, func() {}, scaleTTL/2, // a leave must not wait for expiry
		fmt.Sprintf("the KV document to lose all %d members after the leave burst", r.n),
		func(d *docState) bool { return fleet(d) == 0 })
	r.res.leaveBurst, r.res.leaveCPU, r.res.leaveWrite = br.took, br.cpu, br.writes
	r.logf("leave burst: %v to the KV document (%d writes)", r.res.leaveBurst.Round(time.Millisecond), r.res.leaveWrite)
}

// encodeHealth is one ordinary heartbeat: same load, weight and status.
// scalePools, from NATSROUTE_SCALE_POOLS, spreads the members over that
// many pools (node-i is in pool p<i mod pools>); 0 keeps them all in the
// default pool.
var scalePools int

// scalePool returns the pool of a node id, or "" for the default pool.
func scalePool(id string) string {
	if scalePools == 0 {
		return ""
	}
	i, _ := strconv.Atoi(strings.TrimPrefix(id, "node-")) // other ids: pool p000
	return fmt.Sprintf("p%03d", i%scalePools)
}

// scaleSilent is the member that stops reporting in the request phase.
var scaleSilent string

// scaleHealth is okHealth for a node, in its pool. The fleet's members say
// what the Go Reporter says (probe: true, their 5 s interval), so the
// router schedules a probe for each and sends it if a report is late;
// the silent member and single joins do not (as a nats pub would not), so
// they leave by the TTL, which is what their phases time.
func scaleHealth(id string) bus.Health {
	h := okHealth
	if p := scalePool(id); p != "" {
		h.Pools = []string{p}
	}
	if strings.HasPrefix(id, "node-") && id != scaleSilent {
		h.Probe, h.Interval = true, scaleHeartbeat
	}
	return h
}

func encodeHealth(b *testing.B, id string, seq uint64) []byte {
	h := scaleHealth(id)
	h.Seq = seq
	data, err := bus.EncodeHealth(id, h, bus.Msgpack)
	if err != nil {
		b.Fatal(err)
	}
	return data
}

func flush(b *testing.B, nc *nats.Conn) {
	b.Helper()
	if err := nc.FlushTimeout(time.Minute); err != nil {
		b.Fatalf("flush: %v", err)
	}
}

// heartbeats publishes a report of every node every scaleHeartbeat,
// spread evenly over the period (N/5 per second at 5 s), from its own
// connection. While it runs it owns seq.
type heartbeats struct {
	nc   *nats.Conn
	ids  []string
	seq  []uint64
	sent atomic.Int64 // reports published, over every run of the loop

	cancel context.CancelFunc
	done   chan struct{}
}

// start begins the loop. If silent >= 0, that node reports once more and
// then no longer; the returned channel gets the time of that last report.
func (h *heartbeats) start(b *testing.B, silent int) <-chan time.Time {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	last := make(chan time.Time, 1)
	n := len(h.ids)
	go func() {
		defer close(h.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		start := time.Now()
		for sent := 0; ; {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			due := int(int64(time.Since(start)) * int64(n) / int64(scaleHeartbeat))
			for ; sent < due; sent++ {
				i := sent % n
				if i == silent && sent >= n {
					continue
				}
				h.seq[i]++
				r := scaleHealth(h.ids[i])
				r.Seq = h.seq[i]
				data, err := bus.EncodeHealth(h.ids[i], r, bus.Msgpack)
				if err == nil {
					err = h.nc.Publish(bus.HealthSubject(h.ids[i]), data)
				}
				if err != nil {
					b.Errorf("heartbeat %s: %v", h.ids[i], err)
					return
				}
				h.sent.Add(1)
				if i == silent {
					last <- time.Now()
				}
			}
		}
	}()
	return last
}

// stop ends the loop and flushes its connection, so that what it sent
// reaches the server before anything published after. Safe to call twice.
func (h *heartbeats) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	<-h.done
	h.cancel = nil
	_ = h.nc.FlushTimeout(10 * time.Second)
}

// requestLoad keeps scaleRequesters route.request calls (ConsistentHash,
// msgpack, random keys) in flight on one connection.
type requestLoad struct {
	wg   sync.WaitGroup
	mu   sync.Mutex // guards lat and errs
	lat  []time.Duration
	errs int
}

func startRequests(ctx context.Context, b *testing.B, nc *nats.Conn) *requestLoad {
	bodies := make([][]byte, 4096)
	for i := range bodies {
		var err error
		bodies[i], err = msgpack.Marshal(&bus.Request{Strategy: bus.StrategyConsistentHash, Key: fmt.Sprintf("user-%d", rand.Uint64()),
			Pool: scalePool(fmt.Sprintf("node-%d", i))})
		if err != nil {
			b.Fatal(err)
		}
	}
	r := &requestLoad{}
	for range scaleRequesters {
		r.wg.Go(func() {
			var lat []time.Duration
			errs := 0
			for ctx.Err() == nil {
				t0 := time.Now()
				m, err := nc.Request(bus.SubjectRequest, bodies[rand.IntN(len(bodies))], 2*time.Second)
				took := time.Since(t0)
				if err != nil || m.Header.Get("Nats-Service-Error") != "" {
					errs++
					time.Sleep(time.Millisecond) // no spinning if the router is gone
					continue
				}
				lat = append(lat, took)
			}
			r.mu.Lock()
			r.lat, r.errs = append(r.lat, lat...), r.errs+errs
			r.mu.Unlock()
		})
	}
	return r
}

func (r *requestLoad) wait() ([]time.Duration, int) {
	r.wg.Wait()
	return r.lat, r.errs
}

// docState is the ring document as last seen in the bucket, and when.
type docState struct {
	doc  bus.RingDocument
	rev  uint64
	size int
	at   time.Time // when the watch delivered it
}

func (d *docState) member(id string) (bus.RingNode, bool) {
	i, ok := slices.BinarySearchFunc(d.doc.Nodes, id, func(n bus.RingNode, id string) int { return strings.Compare(n.ID, id) })
	if !ok {
		return bus.RingNode{}, false
	}
	return d.doc.Nodes[i], true
}

// docWatch follows every pool's ring key with a plain KV watch.
type docWatch struct {
	cur atomic.Pointer[docState]
}

func watchDoc(b *testing.B, nc *nats.Conn) *docWatch {
	b.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	kv, err := js.KeyValue(ctx, bus.DefaultBucket)
	if err != nil {
		cancel()
		b.Fatalf("bucket %s: %v", bus.DefaultBucket, err)
	}
	// Every pool's key; the state is their members together (a member is
	// in one pool here), the sum of their sizes and the newest revision.
	w, err := kv.WatchFiltered(ctx, []string{bus.RingKey, bus.RingKey + ".>"})
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	perKey := map[string]docState{}
	dw := &docWatch{}
	dw.cur.Store(&docState{})
	done := make(chan struct{})
	b.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for {
			// The newest entry of each key delivered so far: when the watch
			// falls behind it skips to those, so an entry's arrival is late
			// by at most a decode per key.
			latest := map[string]jetstream.KeyValueEntry{}
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					latest[e.Key()] = e
				}
			}
			for more := true; more; {
				select {
				case next, ok := <-w.Updates():
					if !ok {
						return
					}
					if next != nil {
						latest[next.Key()] = next
					}
				default:
					more = false
				}
			}
			if len(latest) == 0 {
				continue
			}
			at := time.Now()
			var rev uint64
			for key, e := range latest {
				d, err := bus.DecodeRingDocument(e.Value())
				if err != nil {
					fmt.Fprintf(os.Stderr, "scale: ring document %s at revision %d: %v\n", key, e.Revision(), err)
					continue
				}
				perKey[key] = docState{doc: d, rev: e.Revision(), size: len(e.Value())}
				rev = max(rev, e.Revision())
			}
			all := docState{rev: rev, at: at}
			for _, k := range perKey {
				all.doc.Nodes = append(all.doc.Nodes, k.doc.Nodes...)
				all.size += k.size
			}
			if len(perKey) > 1 {
				slices.SortFunc(all.doc.Nodes, func(a, b bus.RingNode) int { return strings.Compare(a.ID, b.ID) })
			}
			dw.cur.Store(&all)
		}
	}()
	return dw
}

// wait polls until cond holds for the newest document and returns when that
// document arrived. After timeout it logs what it waited for and returns
// false: a miss is a result, not a broken run.
func (dw *docWatch) wait(timeout time.Duration, what string, cond func(*docState) bool) (time.Time, *docState, bool) {
	deadline := time.Now().Add(timeout)
	var checked uint64
	for {
		d := dw.cur.Load()
		if d.rev != checked {
			if cond(d) {
				return d.at, d, true
			}
			checked = d.rev
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "scale: timed out after %v waiting for %s (the document at revision %d has %d members)\n", timeout, what, d.rev, len(d.doc.Nodes))
			return time.Time{}, d, false
		}
		time.Sleep(time.Millisecond)
	}
}

// waitCacheMember returns when the cache first routes with id as a member,
// or false (and says so) after timeout.
func waitCacheMember(c *bus.RingCache, id string, timeout time.Duration) (time.Time, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		rev := c.Revision() // before looking, so a change in between is not missed
		if _, ok := c.Snapshot().Member(id); ok {
			return time.Now(), true
		}
		if err := c.WaitRevision(ctx, rev+1); err != nil {
			fmt.Fprintf(os.Stderr, "scale: timed out after %v waiting for a RingCache to show %s: %v\n", timeout, id, err)
			return time.Time{}, false
		}
	}
}

// report hands the figures to the benchmark framework.
func (r scaleResult) report(b *testing.B) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(r.ingestRate, "reports/s")
	b.ReportMetric(float64(r.ingestDropped), "dropped")
	b.ReportMetric(ms(r.joinBurst), "join-burst-ms")
	b.ReportMetric(float64(r.docBytes), "doc-bytes")
	b.ReportMetric(ms(r.reqP50), "req-p50-ms")
	b.ReportMetric(ms(r.reqP99), "req-p99-ms")
	b.ReportMetric(float64(r.reqErrors), "req-errors")
	if !r.silentMissed { // a miss has no figure; the table says so
		b.ReportMetric(r.silentLeave.Seconds(), "silent-leave-s")
	}
	if r.joinsTimed > 0 {
		b.ReportMetric(ms(r.joinToCache), "join-to-cache-ms")
	}
	b.ReportMetric(r.probeRate, "steady-probes/s")
	b.ReportMetric(float64(r.downs), "downs")
	b.ReportMetric(ms(r.leaveBurst), "leave-burst-ms")
	b.ReportMetric(r.rssMB, "rss-MB")
	b.ReportMetric(r.peakMB, "rss-peak-MB")
}

func (r scaleResult) silentText() string {
	if r.silentMissed {
		return fmt.Sprintf("not within %v", scaleSilentWait)
	}
	return strconv.FormatFloat(r.silentLeave.Seconds(), 'f', 2, 64) + " s"
}

// joinMS is a single-join figure, or a dash if no join was timed.
func (r scaleResult) joinMS(d time.Duration) string {
	if r.joinsTimed == 0 {
		return "—"
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
}

// printScaleTable prints one column per size with the targets at 10,000
// members beside them.
func printScaleTable(rs []scaleResult) {
	ms := msText
	rows := []benchRow[scaleResult]{
		{"members", "target at 10,000", func(r scaleResult) string { return strconv.Itoa(r.members) }},
		{"server max_payload (MiB)", "", func(r scaleResult) string { return strconv.FormatInt(r.maxPayload>>20, 10) }},
		{"ring document (bytes)", "", func(r scaleResult) string { return strconv.Itoa(r.docBytes) }},
		{"join burst → KV (ms)", "≤ 1000 (floor 2000)", func(r scaleResult) string { return ms(r.joinBurst) }},
		{"  router CPU in burst (ms)", "", func(r scaleResult) string { return ms(r.burstCPU) }},
		{"  KV writes in burst", "", func(r scaleResult) string { return strconv.FormatUint(r.burstWrite, 10) }},
		{"ingest (reports/s)", "≥ 100000 (floor 50000)", func(r scaleResult) string { return strconv.FormatFloat(r.ingestRate, 'f', 0, 64) }},
		{"  reports published", "", func(r scaleResult) string { return strconv.FormatUint(r.ingestReports, 10) }},
		{"  publish rate (reports/s)", "", func(r scaleResult) string { return strconv.FormatFloat(r.publishRate, 'f', 0, 64) }},
		{"  dropped", "0", func(r scaleResult) string { return strconv.FormatUint(r.ingestDropped, 10) }},
		{"  rejected", "0", func(r scaleResult) string { return strconv.FormatUint(r.ingestRejected, 10) }},
		{"  router CPU per report (µs)", "", func(r scaleResult) string { return strconv.FormatFloat(float64(r.ingestCPUPer)/1e3, 'f', 1, 64) }},
		{"  last Router.Stats poll (ms)", "", func(r scaleResult) string { return ms(r.statsCost) }},
		{"requests under heartbeats", "", func(r scaleResult) string { return strconv.Itoa(r.requests) }},
		{"  requests/s (4 in flight)", "", func(r scaleResult) string { return strconv.FormatFloat(r.reqRate, 'f', 0, 64) }},
		{"  p50 (ms)", "", func(r scaleResult) string { return ms(r.reqP50) }},
		{"  p99 (ms)", "≤ 2 (floor 5)", func(r scaleResult) string { return ms(r.reqP99) }},
		{"  errors", "0", func(r scaleResult) string { return strconv.Itoa(r.reqErrors) }},
		{"  heartbeats accepted / sent", "all", func(r scaleResult) string { return fmt.Sprintf("%d / %d", r.hbAccepted, r.hbSent) }},
		{"  probes sent (per second)", "0 (no report is late)", func(r scaleResult) string { return fmt.Sprintf("%d (%.2f)", r.steadyProbes, r.probeRate) }},
		{"silent member gone after", "≤ TTL+5 = 15 s", scaleResult.silentText},
		{"single joins timed", "", func(r scaleResult) string { return fmt.Sprintf("%d of %d", r.joinsTimed, scaleJoins) }},
		{"join → KV, median (ms)", "", func(r scaleResult) string { return r.joinMS(r.joinToKV) }},
		{"join → RingCache, median (ms)", "goal ≤ 20", func(r scaleResult) string { return r.joinMS(r.joinToCache) }},
		{"join → RingCache, max (ms)", "", func(r scaleResult) string { return r.joinMS(r.joinCacheMax) }},
		{"leave burst → KV (ms)", "≤ 1000 (floor 2000)", func(r scaleResult) string { return ms(r.leaveBurst) }},
		{"  router CPU in leave burst (ms)", "", func(r scaleResult) string { return ms(r.leaveCPU) }},
		{"  KV writes in leave burst", "", func(r scaleResult) string { return strconv.FormatUint(r.leaveWrite, 10) }},
		{"router RSS at end (MB)", "≤ 64", func(r scaleResult) string { return strconv.FormatFloat(r.rssMB, 'f', 1, 64) }},
		{"router RSS peak (MB)", "", func(r scaleResult) string { return strconv.FormatFloat(r.peakMB, 'f', 1, 64) }},
		{"KV writes / errors, whole run", "", func(r scaleResult) string { return fmt.Sprintf("%d / %d", r.kvWrites, r.kvErrors) }},
		{"probes sent / answered for the fleet, whole run", "", func(r scaleResult) string { return fmt.Sprintf("%d / %d", probesSent(r.probes), r.answered) }},
		{"members down, whole run", "0", func(r scaleResult) string { return strconv.FormatUint(r.downs, 10) }},
	}
	printBenchTable("BenchmarkScale (TTL 10s, heartbeats every 5s; cores shared with the server and the load: noisy)", rs, rows)
}

// benchRow is one row of a benchmark's table: what it is, the goal, and
// the figure of one result.
type benchRow[R any] struct {
	name, goal string
	f          func(r R) string
}

// printBenchTable prints title, then a row per figure with a column per
// result and the goal last.
func printBenchTable[R any](title string, rs []R, rows []benchRow[R]) {
	fmt.Println("\n" + title)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	defer w.Flush()
	for _, row := range rows {
		fmt.Fprint(w, row.name, "\t")
		for _, r := range rs {
			fmt.Fprint(w, row.f(r), "\t")
		}
		fmt.Fprint(w, row.goal, "\t\n")
	}
}

// msText is d in milliseconds, two decimals.
func msText(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
}
