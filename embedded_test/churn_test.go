package embedded_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
	"github.com/natsroute/natsroute/ring"
)

// BenchmarkChurn measures what a rolling restart costs the RingCaches that
// applications hold (issue 22): N members heartbeat every 5 s while 10 of
// them a second say leaving and report again 100 ms later. Run it alone:
//
//	go test -run '^$' -bench BenchmarkChurn -benchtime 1x -timeout 20m ./embedded_test
//
// Environment:
//
//	NATSROUTE_CHURN_N=10000              sizes, comma-separated (default 1000,10000)
//	NATSROUTE_CHURN_SECONDS=20           how long the rolling restart lasts
//	NATSROUTE_CHURN_CPUPROFILE=dir       CPU profiles of the router and of cache 0 during it
//	NATSROUTE_CHURN_LEGACY_DOCUMENT=off  the router writes no whole document (NoLegacyDocument)
//	NATSROUTE_CHURN_COALESCE=1ms         the router's write window (--coalesce; default 5ms)
//
// The parent holds the embedded server and the load; the router runs in a
// process of its own (the scale benchmark's router process, with
// churnRouter's config) and so does each of the three RingCaches, so that
// each CPU figure is that process's own (getrusage) and each cache's bytes
// are its connection's InBytes. Lag is from just before a report is
// published (parent's clock) until the cache's snapshot shows the change
// (the cache process's clock; one machine, one clock); each cache process
// knows the order of restarts and looks, at each new revision, at the
// nodes due to change (changeTracker), so the parent says nothing to it
// while they run. A change a cache never shows (the router wrote a leave
// and its rejoin together) counts as missed, not as a lag. Everything
// shares the 2 cores: figures are noisy and pessimistic.
func BenchmarkChurn(b *testing.B) {
	sizes := sizesFromEnv(b, "NATSROUTE_CHURN_N")
	length := 20 * time.Second
	if s := os.Getenv("NATSROUTE_CHURN_SECONDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("NATSROUTE_CHURN_SECONDS=%q: want a whole number of seconds", s)
		}
		length = time.Duration(n) * time.Second
	}
	var all []churnResult
	for _, n := range sizes {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			res := runChurn(b, n, length)
			res.report(b)
			all = append(all, res)
		})
	}
	printChurnTable(all)
}

const (
	// churnCacheEnv, set to a NATS URL, makes the test binary a churn cache
	// process: one RingCache on a connection of its own.
	churnCacheEnv = "NATSROUTE_CHURN_CACHE_PROC"
	// churnRouterEnv, set, makes the scale router process take churnRouter.
	churnRouterEnv = "NATSROUTE_CHURN_ROUTER"

	churnCaches    = 3
	churnRate      = 10                     // nodes that restart per second
	churnDown      = 100 * time.Millisecond // how long a restarting node is gone
	churnHeartbeat = 5 * time.Second
	// churnTTL is far above the heartbeat: on this loaded machine a late
	// heartbeat must not become a ring change of its own.
	churnTTL    = 30 * time.Second
	churnSettle = 2 * time.Second  // heartbeats only, after every cache has the fleet
	churnIdle   = 10 * time.Second // measured idle, scaled to a minute
	churnJoin   = 2 * time.Minute  // every cache must hold the fleet by then
	churnDrain  = 2 * time.Second  // after the last change, for the caches to show it
)

// churnRouter is the churn benchmark's router configuration: the default
// (the whole document written beside the member keys, for readers of
// earlier releases), or without the document if churnLegacyEnv is off.
func churnRouter(cfg *router.Config) {
	cfg.NoLegacyDocument = churnNoLegacy()
	if d, err := time.ParseDuration(os.Getenv(churnCoalesceEnv)); err == nil {
		cfg.Coalesce = d
	}
}

// churnCoalesceEnv sets the churn router's write window (Config.Coalesce).
const churnCoalesceEnv = "NATSROUTE_CHURN_COALESCE"

// churnLegacyEnv=off runs the churn router with NoLegacyDocument.
const churnLegacyEnv = "NATSROUTE_CHURN_LEGACY_DOCUMENT"

func churnNoLegacy() bool { return os.Getenv(churnLegacyEnv) == "off" }

// churnCacheStats is a cache process's answer to "stats".
type churnCacheStats struct {
	CPU     int64  `json:"cpu_us"` // the process's user + system CPU so far
	InBytes uint64 `json:"in_bytes"`
	InMsgs  uint64 `json:"in_msgs"`
	Members int    `json:"members"`
	V3      bool   `json:"v3"`
	// Seen: changes the snapshot first showed since the last stats,
	// event (churnEvent) → Unix ns.
	Seen map[int]int64 `json:"seen,omitempty"`
}

// churnNode is the node that restarts j-th in a fleet of n: a stride
// through the fleet, so that successive restarts are not neighbours by id.
func churnNode(j, n int) int { return j * 7919 % n }

// churnEvent numbers the j-th restart's leave and rejoin.
func churnEvent(j int, rejoin bool) int {
	if rejoin {
		return 2*j + 1
	}
	return 2 * j
}

func churnID(i int) string { return fmt.Sprintf("churn-%05d", i) }

// runChurnCache runs one RingCache on url and serves serveChild's protocol:
//
//	parent: track <n>   child: ok (restarts begin now, in a fleet of n)
//	parent: stats       child: <churnCacheStats as JSON>
func runChurnCache(url string, in io.Reader, out io.Writer) error {
	nc, c, err := dialRingCache(url, "natsroute-churn-cache")
	if err != nil {
		return err
	}
	defer nc.Close()
	defer c.Close()
	var t *changeTracker
	stop, done := func() {}, make(chan struct{})
	close(done)
	defer func() { stop(); <-done }()
	return serveChild(in, out, "churn cache", func(cmd, arg string) (string, bool, error) {
		switch cmd {
		case "track":
			n, err := strconv.Atoi(arg)
			if err != nil || n < 2*churnWindow || t != nil {
				return "", true, fmt.Errorf("churn cache: track %q: once, with a fleet of at least %d", arg, 2*churnWindow)
			}
			t = newChangeTracker(c, n)
			var ctx context.Context
			ctx, stop = context.WithCancel(context.Background())
			done = make(chan struct{})
			go func() { defer close(done); t.run(ctx) }()
			return "ok", true, nil
		case "stats":
			s := nc.Stats()
			var seen map[int]int64
			if t != nil {
				seen = t.take()
			}
			data, err := json.Marshal(churnCacheStats{CPU: selfCPU().Microseconds(), InBytes: s.InBytes, InMsgs: s.InMsgs,
				Members: c.Snapshot().Len(), V3: c.V3(), Seen: seen})
			return string(data), true, err
		}
		return "", false, nil
	})
}

// churnWindow is how many restarts, from the oldest unfinished one, a
// changeTracker looks at, at most: 5 s of them.
const churnWindow = 5 * churnRate

// changeTracker records when a cache's snapshot first shows each restart's
// leave and rejoin. It knows the order of restarts (churnNode) and their
// pace, so the parent need not say anything while they run (each word
// would cost the cache process a read and a write); at each new revision
// it looks up the nodes of the restarts due so far that it has not seen
// through (two or three, usually), so its cost does not grow with the
// fleet. (Looking up a fixed window of 50 was 8 % of the cache process's
// CPU profile at 10,000 members.) A restart whose leave the cache never showed
// (the router wrote leave and rejoin together, or the cache took both in
// one batch) is given up once a restart 2 s younger has shown its leave:
// the parent counts it as missed.
type changeTracker struct {
	c     *bus.RingCache
	ids   []string  // churnNode's order: ids[j % n] restarts j-th
	start time.Time // restarts begin (the parent's start is a little later)

	mu       sync.Mutex // guards the fields below
	lo       int        // restarts before lo are done with
	state    map[int]restartState
	youngest int           // the youngest restart whose leave was seen
	seen     map[int]int64 // churnEvent → Unix ns, until take
}

// restartState is what a changeTracker has seen of one restart.
type restartState uint8

const (
	awaitLeave restartState = iota
	awaitRejoin
	restarted
)

func newChangeTracker(c *bus.RingCache, n int) *changeTracker {
	t := &changeTracker{c: c, ids: make([]string, n), start: time.Now(), state: map[int]restartState{}, youngest: -1, seen: map[int]int64{}}
	for j := range t.ids {
		t.ids[j] = churnID(churnNode(j, n))
	}
	return t
}

// run checks the window at every new revision until ctx ends.
func (t *changeTracker) run(ctx context.Context) {
	for {
		rev := t.c.Revision() // before looking, so a change in between is not missed
		t.check(time.Now().UnixNano(), t.c.Snapshot())
		if t.c.WaitRevision(ctx, rev+1) != nil {
			return
		}
	}
}

func (t *changeTracker) check(now int64, s *ring.Snapshot) {
	t.mu.Lock()
	defer t.mu.Unlock()
	due := int(time.Duration(now-t.start.UnixNano())*churnRate/time.Second) + 1 // restarts 0 to due-1 may have begun
	for j := t.lo; j < min(t.lo+churnWindow, due); j++ {
		st := t.state[j]
		if st == restarted {
			continue
		}
		_, member := s.Member(t.ids[j%len(t.ids)])
		switch {
		case st == awaitLeave && !member:
			t.state[j], t.seen[churnEvent(j, false)] = awaitRejoin, now
			t.youngest = max(t.youngest, j)
		case st == awaitRejoin && member:
			t.state[j], t.seen[churnEvent(j, true)] = restarted, now
		}
	}
	for t.lo < t.youngest {
		if st := t.state[t.lo]; st != restarted && (st != awaitLeave || t.youngest < t.lo+2*churnRate) {
			break
		}
		delete(t.state, t.lo)
		t.lo++
	}
}

// take returns and forgets what was seen so far.
func (t *changeTracker) take() map[int]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	seen := t.seen
	t.seen = map[int]int64{}
	return seen
}

// churnLoad is the fleet: it publishes every report on one connection, so
// that each node's reports reach the router in seq order.
type churnLoad struct {
	b    *testing.B
	nc   *nats.Conn
	ids  []string
	seq  []uint64
	down []bool

	hbStart time.Time // heartbeats are spread evenly from here
	hbSent  int

	churnStart, churnEnd time.Time // leaves are due between these
	leaves               int
	rejoins              []churnRejoin     // due, oldest first
	published            map[int]time.Time // churnEvent → just before its report was published
}

type churnRejoin struct {
	restart int
	at      time.Time
}

// send publishes node i's report: a heartbeat, or leaving.
func (g *churnLoad) send(i int, leaving bool) {
	g.seq[i]++
	h := okHealth
	h.Seq = g.seq[i]
	if leaving {
		h.Status = bus.StatusLeaving
	}
	data, err := bus.EncodeHealth(g.ids[i], h, bus.Msgpack)
	if err == nil {
		err = g.nc.Publish(bus.HealthSubject(g.ids[i]), data)
	}
	if err != nil {
		g.b.Fatalf("report of %s: %v", g.ids[i], err)
	}
}

// change publishes restart j's leave or rejoin.
func (g *churnLoad) change(j int, rejoin bool) {
	i := churnNode(j, len(g.ids))
	g.down[i] = !rejoin
	g.published[churnEvent(j, rejoin)] = time.Now()
	g.send(i, !rejoin)
}

// tick sends what is due: heartbeats of the nodes that are up (every node
// every churnHeartbeat), leaves (churnRate a second in the churn window,
// in churnNode's order) and rejoins (churnDown after each leave).
func (g *churnLoad) tick(now time.Time) {
	n := len(g.ids)
	for due := int(int64(now.Sub(g.hbStart)) * int64(n) / int64(churnHeartbeat)); g.hbSent < due; g.hbSent++ {
		if i := g.hbSent % n; !g.down[i] {
			g.send(i, false)
		}
	}
	for len(g.rejoins) > 0 && !g.rejoins[0].at.After(now) {
		g.change(g.rejoins[0].restart, true)
		g.rejoins = g.rejoins[1:]
	}
	if now.After(g.churnStart) {
		end := now
		if end.After(g.churnEnd) {
			end = g.churnEnd
		}
		for due := int(end.Sub(g.churnStart) * churnRate / time.Second); g.leaves < due; g.leaves++ {
			g.change(g.leaves, false)
			g.rejoins = append(g.rejoins, churnRejoin{g.leaves, time.Now().Add(churnDown)})
		}
	}
}

// runFor ticks every 10 ms for d, or until done (polled every 100 ms)
// holds; it reports whether done held.
func (g *churnLoad) runFor(d time.Duration, done func() bool) bool {
	end := time.Now().Add(d)
	poll := time.Now()
	for now := time.Now(); now.Before(end); now = time.Now() {
		g.tick(now)
		if done != nil && now.Sub(poll) >= 100*time.Millisecond {
			if done() {
				return true
			}
			poll = now
		}
		time.Sleep(10 * time.Millisecond)
	}
	return done == nil
}

// churnSample is every process's counters at one moment.
type churnSample struct {
	at     time.Time
	self   time.Duration // the parent: server and load
	router scaleProcReply
	caches []churnCacheStats
}

// churnResult holds one size's figures.
type churnResult struct {
	members int
	length  time.Duration // the churn window, drain included
	events  int           // leaves and rejoins published

	cacheCores  []float64 // per cache
	cacheBytes  []float64 // per cache, per second
	cacheMsgs   []float64 // per cache, per second
	lags        []time.Duration
	missed      int // changes a cache never showed (see changeTracker), summed over the caches
	routerCores float64
	routerKV    uint64  // KV writes by the router in the churn window
	selfCores   float64 // the parent: server and load

	idleBytes       []float64 // per cache, per minute
	idleCacheCores  []float64 // per cache
	idleRouterCores float64
}

func cores(cpu time.Duration, wall time.Duration) float64 { return cpu.Seconds() / wall.Seconds() }

// runChurn starts the server, the router process and the cache processes,
// joins n members, then measures an idle period and the rolling restart.
func runChurn(b *testing.B, n int, length time.Duration) churnResult {
	s := runServer(b)
	url := s.ClientURL()
	rt := startScaleProc(b, url, churnTTL, churnRouterEnv+"=1")
	g := &churnLoad{b: b, nc: connect(b, url), ids: make([]string, n), seq: make([]uint64, n), down: make([]bool, n),
		published: map[int]time.Time{}}
	for i := range g.ids {
		g.ids[i] = churnID(i)
	}
	var caches []*childProc
	for i := range churnCaches {
		caches = append(caches, startServingChild(b, fmt.Sprintf("cache process %d", i), churnCacheEnv+"="+url))
	}
	sample := func() churnSample {
		s := churnSample{at: time.Now(), self: selfCPU(), router: rt.stats(b)}
		for _, c := range caches {
			var st churnCacheStats
			if line := c.do(b, "stats"); json.Unmarshal([]byte(line), &st) != nil {
				b.Fatalf("%s: stats: got %q", c.name, line)
			}
			s.caches = append(s.caches, st)
		}
		return s
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "churn members=%d: %s\n", n, fmt.Sprintf(format, args...))
	}

	// Every node's first report at once, then heartbeats from there.
	t0 := time.Now()
	g.hbStart = t0.Add(-churnHeartbeat)
	g.churnStart = t0.Add(24 * time.Hour) // not yet
	g.tick(t0)
	var last churnSample
	all := g.runFor(churnJoin, func() bool {
		last = sample()
		for _, c := range last.caches {
			if c.Members != n || !c.V3 {
				return false
			}
		}
		return true
	})
	if !all {
		b.Fatalf("caches after %v: %+v; want %d members each, v3", churnJoin, last.caches, n)
	}
	logf("every cache holds the fleet (v3) %v after the first reports", time.Since(t0).Round(time.Millisecond))
	g.runFor(churnSettle, nil)

	// Idle: heartbeats only, no ring change.
	before := sample()
	g.runFor(churnIdle, nil)
	after := sample()
	res := churnResult{members: n}
	wall := after.at.Sub(before.at)
	for i := range caches {
		res.idleBytes = append(res.idleBytes, float64(after.caches[i].InBytes-before.caches[i].InBytes)/wall.Minutes())
		res.idleCacheCores = append(res.idleCacheCores, cores(time.Duration(after.caches[i].CPU-before.caches[i].CPU)*time.Microsecond, wall))
	}
	res.idleRouterCores = cores(time.Duration(after.router.CPU-before.router.CPU)*time.Microsecond, wall)
	logf("idle %v: cache bytes/min %.0f, router KV writes %d", wall.Round(time.Millisecond), res.idleBytes, after.router.Stats.KVWrites-before.router.Stats.KVWrites)

	// The rolling restart. The window of CPU and bytes ends with the last
	// rejoin's publication; the lags are collected until every change
	// shows, or for churnDrain.
	for _, c := range caches {
		if line := c.do(b, fmt.Sprintf("track %d", n)); line != "ok" {
			b.Fatalf("%s: track: got %q", c.name, line)
		}
	}
	stopProfiles := func() {}
	if dir := os.Getenv("NATSROUTE_CHURN_CPUPROFILE"); dir != "" {
		stopRouter := rt.profile(b, filepath.Join(dir, fmt.Sprintf("churn-%d-router.pprof", n)))
		stopCache := caches[0].profile(b, filepath.Join(dir, fmt.Sprintf("churn-%d-cache.pprof", n)))
		stopProfiles = func() { stopCache(); stopRouter() }
	}
	before = sample()
	g.churnStart, g.churnEnd = before.at, before.at.Add(length)
	g.runFor(length, nil)
	for len(g.rejoins) > 0 {
		g.runFor(10*time.Millisecond, nil)
	}
	after = sample()
	stopProfiles()
	seen := make([]map[int]int64, len(caches))
	for i := range seen {
		seen[i] = map[int]int64{}
	}
	collect := func(s churnSample) bool {
		all := true
		for i, c := range s.caches {
			for k, ns := range c.Seen {
				seen[i][k] = ns
			}
			all = all && len(seen[i]) == len(g.published)
		}
		return all
	}
	if !collect(after) {
		g.runFor(churnDrain, func() bool { return collect(sample()) })
	}

	wall = after.at.Sub(before.at)
	res.length, res.events = wall, len(g.published)
	for i := range caches {
		a, c := after.caches[i], before.caches[i]
		res.cacheCores = append(res.cacheCores, cores(time.Duration(a.CPU-c.CPU)*time.Microsecond, wall))
		res.cacheBytes = append(res.cacheBytes, float64(a.InBytes-c.InBytes)/wall.Seconds())
		res.cacheMsgs = append(res.cacheMsgs, float64(a.InMsgs-c.InMsgs)/wall.Seconds())
		for k, ns := range seen[i] {
			res.lags = append(res.lags, time.Unix(0, ns).Sub(g.published[k]))
		}
		res.missed += len(g.published) - len(seen[i])
	}
	slices.Sort(res.lags)
	res.routerCores = cores(time.Duration(after.router.CPU-before.router.CPU)*time.Microsecond, wall)
	res.routerKV = after.router.Stats.KVWrites - before.router.Stats.KVWrites
	res.selfCores = cores(after.self-before.self, wall)
	logf("churn %v: %d changes; cache cores %.4f, bytes/s %.0f; lag p50 %v p99 %v; %d missed; router %.3f cores, %d KV writes",
		wall.Round(time.Millisecond), res.events, res.cacheCores, res.cacheBytes, res.lag(50), res.lag(99), res.missed, res.routerCores, res.routerKV)
	return res
}

// lag returns the p-th percentile of the change → cache lags.
func (r churnResult) lag(p int) time.Duration {
	if len(r.lags) == 0 {
		return 0
	}
	return r.lags[min(len(r.lags)*p/100, len(r.lags)-1)]
}

func (r churnResult) report(b *testing.B) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(slices.Max(r.cacheCores), "cache-cores")
	b.ReportMetric(slices.Max(r.cacheBytes), "cache-B/s")
	b.ReportMetric(ms(r.lag(50)), "lag-p50-ms")
	b.ReportMetric(ms(r.lag(99)), "lag-p99-ms")
	b.ReportMetric(float64(r.missed), "missed")
	b.ReportMetric(r.routerCores, "router-cores")
	b.ReportMetric(slices.Max(r.idleBytes), "idle-cache-B/min")
}

// printChurnTable prints one column per size, the goals at 10,000 beside.
func printChurnTable(rs []churnResult) {
	if len(rs) == 0 {
		return
	}
	list := func(f string, xs []float64) string {
		parts := make([]string, len(xs))
		for i, x := range xs {
			parts[i] = fmt.Sprintf(f, x)
		}
		return strings.Join(parts, " / ")
	}
	rows := []benchRow[churnResult]{
		{"members", "goal at 10,000 (floor)", func(r churnResult) string { return strconv.Itoa(r.members) }},
		{"churn window (s), changes", "", func(r churnResult) string {
			return fmt.Sprintf("%.1f, %d", r.length.Seconds(), r.events)
		}},
		{"CPU per cache (cores), caches 0/1/2", "≤ 0.01 (0.05)", func(r churnResult) string { return list("%.4f", r.cacheCores) }},
		{"bytes per cache (B/s)", "≤ 10,000 (100,000)", func(r churnResult) string { return list("%.0f", r.cacheBytes) }},
		{"messages per cache (/s)", "", func(r churnResult) string { return list("%.1f", r.cacheMsgs) }},
		{"change → cache p50 (ms)", "≤ 3 (10)", func(r churnResult) string { return msText(r.lag(50)) }},
		{"change → cache p99 (ms)", "≤ 10 (30)", func(r churnResult) string { return msText(r.lag(99)) }},
		{"change → cache max (ms)", "", func(r churnResult) string { return msText(r.lag(100)) }},
		{"changes a cache never showed", "0", func(r churnResult) string { return strconv.Itoa(r.missed) }},
		{"router CPU (cores, own process)", "", func(r churnResult) string { return fmt.Sprintf("%.3f", r.routerCores) }},
		{"router KV writes", "", func(r churnResult) string { return strconv.FormatUint(r.routerKV, 10) }},
		{"server + load CPU (cores)", "", func(r churnResult) string { return fmt.Sprintf("%.3f", r.selfCores) }},
		{"idle: bytes per cache per minute", "~0 (heartbeats)", func(r churnResult) string { return list("%.0f", r.idleBytes) }},
		{"idle: CPU per cache (cores)", "", func(r churnResult) string { return list("%.4f", r.idleCacheCores) }},
		{"idle: router CPU (cores)", "", func(r churnResult) string { return fmt.Sprintf("%.3f", r.idleRouterCores) }},
	}
	doc := "whole document written too"
	if churnNoLegacy() {
		doc = "no whole document"
	}
	printBenchTable(fmt.Sprintf("BenchmarkChurn (%d nodes/s restart, each gone %v; heartbeats every %v; %s; caches and router in processes of their own; shared 2 cores: noisy)",
		churnRate, churnDown, churnHeartbeat, doc), rs, rows)
}
