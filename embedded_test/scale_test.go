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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
	"github.com/natsroute/natsroute/ring"
	"github.com/vmihailenco/msgpack/v5"
)

// BenchmarkScale measures one router process against a fleet of N members
// (DESIGN.md, "Scale"), published one key per member (v3), on a server with
// the default 1 MiB max_payload at every size. It takes minutes per size,
// so run it alone and once:
//
//	NATSROUTE_SCALE_N=10000 go test -run '^$' -bench BenchmarkScale -benchtime 1x -timeout 60m ./embedded_test
//
// Environment:
//
//	NATSROUTE_SCALE_N=50000          sizes to run, comma-separated (default 1000,10000)
//	NATSROUTE_SCALE_CPUPROFILE=dir   write the router's CPU profile of each phase there
//
//	NATSROUTE_SCALE_LEGACY_DOCUMENT=false  the router's --legacy-document at every size
//
// Unless that says otherwise, up to 30,000 members the router also writes
// the whole document for readers of earlier releases (--legacy-document,
// the default); above, it does not (the document would not fit in 1 MiB
// past about 33,000 members).
//
// The router runs in a child process (the test binary re-run behind
// scaleProcEnv) so that its RSS and CPU exclude the embedded server, the
// load generator and the RingCaches that time what reaches readers, which
// share the parent. Everything shares the machine's cores, so on a small
// machine the figures are noisy and pessimistic.
func BenchmarkScale(b *testing.B) {
	scalePools = 0
	if s := os.Getenv("NATSROUTE_SCALE_POOLS"); s != "" {
		var err error
		if scalePools, err = strconv.Atoi(s); err != nil || scalePools < 1 || scalePools > 1000 {
			b.Fatalf("NATSROUTE_SCALE_POOLS=%q: want 1 to 1000", s)
		}
	}
	scaleLegacy = nil
	if s := os.Getenv("NATSROUTE_SCALE_LEGACY_DOCUMENT"); s != "" {
		on, err := strconv.ParseBool(s)
		if err != nil {
			b.Fatalf("NATSROUTE_SCALE_LEGACY_DOCUMENT=%q: want true or false", s)
		}
		scaleLegacy = &on
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
	scaleLegacyMax    = 30_000                 // above this the router writes no whole document (over 1 MiB past ~33,000)
	scaleCaches       = 3                      // RingCaches following the pool, each on its own connection
	scaleReadyRuns    = 3                      // new RingCaches timed from scratch to ready
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
	legacy     bool // the router also writes the whole document (ring, ring.<pool>)

	docBytes    int           // the whole document with every member (0 if not written)
	keyBytes    int           // the values of every member key together
	joinBurst   time.Duration // first report of N nodes → the member keys hold all N
	burstCaches time.Duration // → every RingCache has them all
	burstCPU    time.Duration // router CPU during the burst
	burstWrite  uint64        // KV writes it took

	ingestReports  uint64
	ingestRate     float64 // accepted / (first publish → last accepted)
	publishRate    float64 // how fast the generator published them
	ingestDropped  uint64
	ingestRejected uint64
	ingestCPUPer   time.Duration // router CPU per report
	statsCost      time.Duration // one Router.Stats call, which the ingest wait polls

	requests        int
	reqErrors       int
	reqRate         float64
	reqP50          time.Duration
	reqP99          time.Duration
	hbSent          int64             // heartbeats sent during the request phase
	hbAccepted      uint64            // and accepted by the router in it
	steadyProbes    uint64            // probes the router sent in the request phase
	probeRate       float64           // and per second
	probes          map[string]uint64 // the router's probes by result, whole run
	downs           uint64            // members probes took down, whole run
	answered        int64             // probes the fleet's responder answered, whole run
	silentLeave     time.Duration     // last report → its member key deleted
	silentMissed    bool              // not gone within scaleSilentWait
	leaveBurst      time.Duration     // every member says leaving → no member key left
	leaveCaches     time.Duration     // → no member in any RingCache
	leaveMissed     bool              // not within scaleTTL/2: members may have expired meanwhile
	leaveUnfinished bool              // not even by the end of the time it was given
	leaveCPU        time.Duration     // router CPU during it
	leaveWrite      uint64            // KV writes it took
	readyMedian     time.Duration     // a new RingCache: WatchRing → ready (initial values applied)
	readyMax        time.Duration
	readyMembers    int           // members in the last one when ready
	joinsTimed      int           // single joins timed (the rest missed scaleJoinWait)
	joinToKV        time.Duration // median over the joins timed
	joinToCache     time.Duration // median
	joinCacheMax    time.Duration

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
	kv       *memberWatch     // the member keys, as a plain KV watch sees them
	caches   []*bus.RingCache // following cachePool
	js       jetstream.JetStream
	ids      []string
	subjects []string
	pubs     []*nats.Conn // for the burst, the ingest phase and single joins
	hb       *heartbeats
	answered *atomic.Int64 // probes answered for the fleet
	profiles string        // where CPU profiles go; "" for none
	res      scaleResult

	cachePool  string // the pool the RingCaches follow ("" for the default pool)
	cacheFleet int    // fleet members in it
}

// runScale runs the phases in order (the numbers are those of the issue):
// each leaves every member alive and the router caught up for the next.
func runScale(b *testing.B, n int) scaleResult {
	s := runServer(b) // default max_payload (1 MiB) at every size: v3 entries are a few dozen bytes
	r := &scaleRun{b: b, n: n, url: s.ClientURL(), profiles: os.Getenv("NATSROUTE_SCALE_CPUPROFILE")}
	r.res.members, r.res.legacy = n, n <= scaleLegacyMax
	if scaleLegacy != nil {
		r.res.legacy = *scaleLegacy
	}
	r.router = startScaleProc(b, r.url, scaleTTL, scaleProcLegacyEnv+"="+strconv.FormatBool(r.res.legacy))
	kvConn := connect(b, r.url)
	r.res.maxPayload = kvConn.MaxPayload()
	r.kv = watchMembers(b, kvConn)
	var err error
	if r.js, err = jetstream.New(kvConn); err != nil {
		b.Fatal(err)
	}
	r.ids, r.subjects = make([]string, n), make([]string, n)
	r.cachePool = scalePool("join")
	for i := range r.ids {
		r.ids[i] = fmt.Sprintf("node-%05d", i)
		r.subjects[i] = bus.HealthSubject(r.ids[i])
		if scalePool(r.ids[i]) == r.cachePool {
			r.cacheFleet++
		}
	}
	for range scaleCaches {
		r.caches = append(r.caches, r.watchRing(b, connect(b, r.url)))
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
	r.readyFromScratch()    // new RingCaches, the fleet in place
	r.singleJoins()         // 6
	// The whole document, if written: read now, not right after the burst,
	// since it is written after the member keys and lags them.
	if r.res.legacy {
		r.res.docBytes = r.documentSize()
	}
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
// connection publishes them, and times it until the member keys hold them
// all and until every RingCache has them. Heartbeats then start at the
// fleet's pace, as a real fleet's would: without them, members reported
// early in a long burst would expire.
func (r *scaleRun) joinBurst() {
	first := make([][]byte, r.n)
	for i := range first {
		r.hb.seq[i]++
		first[i] = encodeHealth(r.b, r.ids[i], r.hb.seq[i])
	}
	limit := 2*time.Minute + time.Duration(r.n)*20*time.Millisecond
	br := r.burst("burst", first, func() { r.hb.start(r.b, -1) }, limit, 0,
		fmt.Sprintf("all %d members after the join burst", r.n),
		func(s *kvState) bool { return s.fleet >= r.n },
		func(s *ring.Snapshot) bool { return s.Len() >= r.cacheFleet })
	res := &r.res
	res.joinBurst, res.burstCaches, res.burstCPU, res.burstWrite = br.toKV, br.toCaches, br.cpu, br.writes
	res.keyBytes = r.kv.bytes()
	r.logf("join burst: %v to the member keys (%d bytes of values), %v to every RingCache, %d writes",
		res.joinBurst.Round(time.Millisecond), res.keyBytes, res.burstCaches.Round(time.Millisecond), res.burstWrite)
}

// documentSize returns the size of the caches' pool's whole document.
func (r *scaleRun) documentSize() int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := r.js.KeyValue(ctx, bus.DefaultBucket)
	if err == nil {
		var e jetstream.KeyValueEntry
		if e, err = kv.Get(ctx, bus.PoolKey(r.cachePool)); err == nil {
			return len(e.Value())
		}
	}
	r.b.Fatalf("the whole document of pool %q: %v", r.cachePool, err)
	return 0
}

// burstResult is what one burst took.
type burstResult struct {
	toKV       time.Duration // first publish → the member keys met the condition
	toCaches   time.Duration // → every RingCache met it
	missed     bool          // not both within the limit (then timed until they were)
	unfinished bool          // nor within the limit and the settling time after it
	cpu        time.Duration // router CPU meanwhile
	writes     uint64        // KV writes meanwhile
}

// burst publishes msgs (msgs[i] on node i's subject) as fast as one
// connection does, calls then, and times it until the member keys meet
// inKV and every RingCache meets inCache, with the router's CPU profiled
// as phase if asked for. Past limit the burst is marked missed and timed
// for up to settle more; past that it is marked unfinished (with settle 0,
// the benchmark fails at limit).
func (r *scaleRun) burst(phase string, msgs [][]byte, then func(), limit, settle time.Duration, what string,
	inKV func(*kvState) bool, inCache func(*ring.Snapshot) bool) burstResult {
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
	missed, unfinished := false, false
	waitFor := func(where string, wait func(time.Duration) (time.Time, bool)) time.Duration {
		var at time.Time
		ok := false
		if !missed {
			at, ok = wait(time.Until(t0.Add(limit)))
		}
		if !ok && settle > 0 && !unfinished {
			missed = true
			at, ok = wait(time.Until(t0.Add(limit + settle)))
		}
		switch {
		case ok:
			return at.Sub(t0)
		case settle == 0:
			b.Fatalf("%s: not within %v: %s in %s", phase, limit, what, where)
		}
		unfinished = true
		return limit + settle
	}
	toKV := waitFor("the member keys", func(d time.Duration) (time.Time, bool) {
		return r.kv.wait(d, what+" in the member keys", inKV)
	})
	toCaches := waitFor("every RingCache", func(d time.Duration) (time.Time, bool) {
		return waitCaches(r.caches, d, what+" in every RingCache", inCache)
	})
	stopProfile()
	after := r.router.stats(b)
	return burstResult{toKV: toKV, toCaches: toCaches, missed: missed, unfinished: unfinished,
		cpu: time.Duration(after.CPU-before.CPU) * time.Microsecond, writes: after.Stats.KVWrites - before.Stats.KVWrites}
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
	what := fmt.Sprintf("%s, silent since %s, to lose its member key", r.ids[victim], lastReport.Format("15:04:05.000"))
	at, ok := r.kv.wait(time.Until(lastReport.Add(scaleSilentWait)), what,
		func(s *kvState) bool { return !s.member(r.ids[victim]) })
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

// watchRing starts a RingCache of the caches' pool on nc.
func (r *scaleRun) watchRing(b *testing.B, nc *nats.Conn) *bus.RingCache {
	b.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	c, err := bus.WatchRing(context.Background(), js, "", r.cacheOpts()...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

func (r *scaleRun) cacheOpts() []bus.RingCacheOption {
	opts := []bus.RingCacheOption{bus.WithRingCacheLogger(testLogger(r.b))}
	if r.cachePool != "" {
		opts = append(opts, bus.WithPool(r.cachePool))
	}
	return opts
}

// readyFromScratch times new RingCaches from WatchRing to ready (it
// returns once the initial values of the pool's keys are all applied),
// with the fleet in place and heartbeating, one at a time on one
// connection.
func (r *scaleRun) readyFromScratch() {
	b, res := r.b, &r.res
	var took []time.Duration
	for range scaleReadyRuns {
		ctx, cancel := context.WithTimeout(context.Background(), scaleJoinWait)
		t0 := time.Now()
		c, err := bus.WatchRing(ctx, r.js, "", r.cacheOpts()...)
		d := time.Since(t0)
		cancel()
		if err != nil {
			b.Fatalf("a new RingCache: %v", err)
		}
		res.readyMembers = c.Snapshot().Len()
		v3 := c.V3()
		c.Close()
		if !v3 {
			b.Fatalf("a new RingCache does not answer from the v3 keys")
		}
		took = append(took, d)
	}
	slices.Sort(took)
	res.readyMedian, res.readyMax = took[len(took)/2], took[len(took)-1]
	r.logf("a new RingCache ready after %v (median of %d, max %v), %d members", res.readyMedian, len(took), res.readyMax, res.readyMembers)
}

// singleJoins times scaleJoins new nodes joining one at a time, spaced
// wider than the router's write window, heartbeats still running: until
// the first RingCache routes to the node, and until its member key reaches
// the plain KV watch. It stops at the first join that misses
// scaleJoinWait: later ones would queue behind it.
func (r *scaleRun) singleJoins() {
	b, res := r.b, &r.res
	defer r.profile("joins")()
	var toKV, toCache []time.Duration
	for j := range scaleJoins {
		id := fmt.Sprintf("join-%02d", j)
		data := encodeHealth(b, id, 1)
		time.Sleep(2 * router.DefaultCoalesce) // spaced: each join is a lone change
		t0 := time.Now()
		if err := r.pubs[0].Publish(bus.HealthSubject(id), data); err != nil {
			b.Fatal(err)
		}
		seen, ok := waitCaches(r.caches[:1], scaleJoinWait, id+" in a RingCache", func(s *ring.Snapshot) bool { _, ok := s.Member(id); return ok })
		if !ok {
			break
		}
		at, ok := r.kv.wait(time.Second, id+"'s member key (the cache had it)", func(s *kvState) bool { return s.member(id) })
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
// Reporters close together), and times it until no member key of the
// fleet is left and no RingCache has one. The TTL is far off: only the
// leaves can do it.
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
	// What is left in a cache is at most the single joins, until their TTL.
	noFleet := func(s *ring.Snapshot) bool {
		return s.Len() <= scaleJoins && !slices.ContainsFunc(s.Members(), func(m ring.Member) bool { return strings.HasPrefix(m.ID, "node-") })
	}
	// A leave must not wait for expiry: past TTL/2 the members may be
	// expiring (heartbeats stopped just before), so a slower burst is
	// timed to its end but marked missed.
	br := r.burst("leave", leave, func() {}, scaleTTL/2, 2*time.Minute+time.Duration(r.n)*10*time.Millisecond,
		fmt.Sprintf("none of the %d members after the leave burst", r.n),
		func(s *kvState) bool { return s.fleet == 0 }, noFleet)
	r.res.leaveBurst, r.res.leaveCaches, r.res.leaveMissed, r.res.leaveCPU, r.res.leaveWrite = br.toKV, br.toCaches, br.missed, br.cpu, br.writes
	r.res.leaveUnfinished = br.unfinished
	r.logf("leave burst: %v to the member keys, %v to every RingCache (%d writes; over %v, expiry included: %v)",
		r.res.leaveBurst.Round(time.Millisecond), r.res.leaveCaches.Round(time.Millisecond), r.res.leaveWrite, scaleTTL/2, br.missed)
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

// scaleLegacy, from NATSROUTE_SCALE_LEGACY_DOCUMENT, sets the router's
// --legacy-document at every size; nil leaves it to the size.
var scaleLegacy *bool

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

// kvState is the membership as the member keys hold it, and when the
// watch last delivered an entry. A node is in one pool here, so node ids
// name members.
type kvState struct {
	members map[string]int // node id → size of its entry
	fleet   int            // members whose id starts with node-
	size    int            // sizes of all entries together
	rev     uint64
	at      time.Time
}

func (s *kvState) member(id string) bool { _, ok := s.members[id]; return ok }

// memberWatch follows every pool's member keys (members.>) with a plain KV
// watch: what the bucket holds, before any reader builds a ring from it.
type memberWatch struct {
	mu sync.Mutex // guards s
	s  kvState
}

func watchMembers(b *testing.B, nc *nats.Conn) *memberWatch {
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
	w, err := kv.Watch(ctx, bus.MembersKeyPrefix+">")
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	mw := &memberWatch{s: kvState{members: map[string]int{}}}
	done := make(chan struct{})
	b.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for e := range w.Updates() {
			if e != nil {
				mw.apply(e)
			}
		}
	}()
	return mw
}

// apply takes one entry: a put adds or updates a member, a delete or purge
// removes it.
func (w *memberWatch) apply(e jetstream.KeyValueEntry) {
	_, node, ok := bus.ParseMemberKey(e.Key())
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	s := &w.s
	old, had := s.members[node]
	if had {
		s.size -= old
		delete(s.members, node)
	}
	if e.Operation() == jetstream.KeyValuePut {
		s.members[node] = len(e.Value())
		s.size += len(e.Value())
	}
	if is := s.member(node); is != had && strings.HasPrefix(node, "node-") {
		if is {
			s.fleet++
		} else {
			s.fleet--
		}
	}
	s.rev, s.at = e.Revision(), time.Now()
}

// bytes is the size of every member entry together.
func (w *memberWatch) bytes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.s.size
}

// wait polls until cond holds for the member keys and returns when the
// entry that made it hold arrived. After timeout it logs what it waited
// for and returns false: a miss is a result, not a broken run.
func (w *memberWatch) wait(timeout time.Duration, what string, cond func(*kvState) bool) (time.Time, bool) {
	deadline := time.Now().Add(timeout)
	var checked uint64
	for {
		w.mu.Lock()
		rev, at, ok := w.s.rev, w.s.at, false
		if rev != checked {
			ok, checked = cond(&w.s), rev
		}
		members := len(w.s.members)
		w.mu.Unlock()
		if ok {
			return at, true
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "scale: timed out after %v waiting for %s (the member keys at revision %d hold %d members)\n", timeout, what, rev, members)
			return time.Time{}, false
		}
		time.Sleep(time.Millisecond)
	}
}

// waitCaches returns when every cache has met cond (the time the last one
// was seen to), or false (and says so) after timeout.
func waitCaches(caches []*bus.RingCache, timeout time.Duration, what string, cond func(*ring.Snapshot) bool) (time.Time, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, c := range caches {
		for {
			rev := c.Revision() // before looking, so a change in between is not missed
			if cond(c.Snapshot()) {
				break
			}
			if err := c.WaitRevision(ctx, rev+1); err != nil {
				fmt.Fprintf(os.Stderr, "scale: timed out after %v waiting for %s: %v\n", timeout, what, err)
				return time.Time{}, false
			}
		}
	}
	return time.Now(), true
}

// report hands the figures to the benchmark framework.
func (r scaleResult) report(b *testing.B) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(r.ingestRate, "reports/s")
	b.ReportMetric(float64(r.ingestDropped), "dropped")
	b.ReportMetric(ms(r.joinBurst), "join-burst-ms")
	b.ReportMetric(ms(r.burstCaches), "join-burst-caches-ms")
	b.ReportMetric(ms(r.readyMedian), "cache-ready-ms")
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
	b.ReportMetric(ms(r.leaveCaches), "leave-burst-caches-ms")
	b.ReportMetric(r.rssMB, "rss-MB")
	b.ReportMetric(r.peakMB, "rss-peak-MB")
}

func (r scaleResult) silentText() string {
	if r.silentMissed {
		return fmt.Sprintf("not within %v", scaleSilentWait)
	}
	return strconv.FormatFloat(r.silentLeave.Seconds(), 'f', 2, 64) + " s"
}

// leaveMS is a leave-burst figure, marked when members may have expired
// meanwhile.
func (r scaleResult) leaveMS(d time.Duration) string {
	s := strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
	if r.leaveUnfinished {
		return "not within " + d.String()
	}
	if r.leaveMissed {
		s += fmt.Sprintf(" (over %v: expiry included)", scaleTTL/2)
	}
	return s
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
		{"whole document (bytes)", "", func(r scaleResult) string {
			if !r.legacy {
				return "not written"
			}
			return strconv.Itoa(r.docBytes)
		}},
		{"member keys' values (bytes)", "", func(r scaleResult) string { return strconv.Itoa(r.keyBytes) }},
		{"join burst → member keys (ms)", "", func(r scaleResult) string { return ms(r.joinBurst) }},
		{"join burst → every RingCache (ms)", "≤ 1000 (floor 2000); 50,000: ≤ 3000 (5000)", func(r scaleResult) string { return ms(r.burstCaches) }},
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
		{"RingCache ready from scratch, median (ms)", "50,000: ≤ 1000 (floor 2000)", func(r scaleResult) string { return ms(r.readyMedian) }},
		{"  max (ms)", "", func(r scaleResult) string { return ms(r.readyMax) }},
		{"  members in it", "", func(r scaleResult) string { return strconv.Itoa(r.readyMembers) }},
		{"single joins timed", "", func(r scaleResult) string { return fmt.Sprintf("%d of %d", r.joinsTimed, scaleJoins) }},
		{"join → member key, median (ms)", "", func(r scaleResult) string { return r.joinMS(r.joinToKV) }},
		{"join → RingCache, median (ms)", "≤ 5 (floor 10), also at 50,000", func(r scaleResult) string { return r.joinMS(r.joinToCache) }},
		{"join → RingCache, max (ms)", "", func(r scaleResult) string { return r.joinMS(r.joinCacheMax) }},
		{"leave burst → member keys (ms)", "", func(r scaleResult) string { return r.leaveMS(r.leaveBurst) }},
		{"leave burst → every RingCache (ms)", "≤ 1000 (floor 2000)", func(r scaleResult) string { return r.leaveMS(r.leaveCaches) }},
		{"  router CPU in leave burst (ms)", "", func(r scaleResult) string { return ms(r.leaveCPU) }},
		{"  KV writes in leave burst", "", func(r scaleResult) string { return strconv.FormatUint(r.leaveWrite, 10) }},
		{"router RSS at end (MB)", "≤ 64 (floor 80)", func(r scaleResult) string { return strconv.FormatFloat(r.rssMB, 'f', 1, 64) }},
		{"router RSS peak (MB)", "", func(r scaleResult) string { return strconv.FormatFloat(r.peakMB, 'f', 1, 64) }},
		{"KV writes / errors, whole run", "", func(r scaleResult) string { return fmt.Sprintf("%d / %d", r.kvWrites, r.kvErrors) }},
		{"probes sent / answered for the fleet, whole run", "", func(r scaleResult) string { return fmt.Sprintf("%d / %d", probesSent(r.probes), r.answered) }},
		{"members down, whole run", "0", func(r scaleResult) string { return strconv.FormatUint(r.downs, 10) }},
	}
	printBenchTable("BenchmarkScale, one key per member (TTL 10s, heartbeats every 5s; cores shared with the server and the load: noisy)", rs, rows)
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
