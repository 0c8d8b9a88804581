package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// simNode is a simulated node whose load the demo script changes.
type simNode struct {
	id       string
	pools    []string   // nil: the default pool
	mu       sync.Mutex // guards cpu and the reporter's use of it
	cpu      float64
	reporter *bus.Reporter
	gone     bool
}

func (n *simNode) health(context.Context) (bus.Health, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	jitter := rand.Float64()*4 - 2
	cpu := min(max(n.cpu+jitter, 0), 100)
	return bus.Health{
		CPUUsage: cpu, MemoryUsage: 30 + cpu/3, ActiveConnections: int64(cpu * 20),
		AvgLatency: time.Duration(2+cpu/10) * time.Millisecond,
	}, nil
}

func (n *simNode) setCPU(v float64) { n.mu.Lock(); n.cpu = v; n.mu.Unlock() }

// demoCmd runs an embedded NATS, a router and simulated nodes, and prints
// how picks spread under each strategy while a node gets overloaded, one
// drains and one leaves.
func demoCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("demo", stderr)
	duration := fs.Duration("duration", 20*time.Second, "how long the demo runs (0: until Ctrl-C)")
	if err := fs.parse(args); err != nil {
		return fs.failed(err)
	}
	if fs.NArg() > 0 {
		return fs.failed(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if *duration < 0 {
		fmt.Fprintln(stderr, "router demo: --duration must be >= 0")
		return 2
	}
	dir, err := os.MkdirTemp("", "natsroute-demo-")
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}
	go ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		fmt.Fprintln(stderr, "router demo: embedded NATS did not start")
		return 1
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}
	defer nc.Close()
	cfg := router.DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg.Balancer.Staleness = 2 * time.Second
	cfg.BalanceFactor = 1.5 // load-aware ConsistentHash: an overloaded node sheds keys
	cfg.ShedInterval = 300 * time.Millisecond
	rt, err := router.New(nc, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}
	startCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = rt.Start(startCtx)
	cancel()
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}
	defer rt.Close()

	nodes := []*simNode{
		{id: "node-a", cpu: 20}, {id: "node-b", cpu: 45, pools: []string{bus.DefaultPool, "search"}},
		{id: "node-c", cpu: 35}, {id: "node-d", cpu: 50}, {id: "node-e", cpu: 30},
		{id: "search-1", cpu: 25, pools: []string{"search"}}, {id: "search-2", cpu: 50, pools: []string{"search"}},
	}
	for _, n := range nodes {
		var opts []bus.ReporterOption
		if n.pools != nil {
			opts = append(opts, bus.WithPools(n.pools...))
		}
		if n.reporter, err = bus.NewReporter(nc, n.id, bus.HealthFunc(n.health), 200*time.Millisecond, opts...); err != nil {
			fmt.Fprintln(stderr, "router demo:", err)
			return 1
		}
	}
	defer func() {
		for _, n := range nodes {
			_ = n.reporter.Close()
		}
	}()
	client, err := bus.NewClient(nc)
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}

	fmt.Fprintf(stdout, "natsroute demo: embedded NATS at %s, a router, seven simulated nodes in two pools:\n", ns.ClientURL())
	fmt.Fprintln(stdout, "pool default has node-a..node-e; pool search has search-1, search-2 and node-b (a node may serve several pools).")
	fmt.Fprintln(stdout, "Every second: 1,000 keys through ConsistentHash and 1,000 picks through ResourceAware in the default pool,")
	fmt.Fprintln(stdout, "and 1,000 keys in pool search. Load-aware ConsistentHash is on (--balance-factor 1.5).")
	phases := []struct {
		at   float64 // fraction of the run
		say  string
		step func()
	}{
		{0, "all nodes healthy; ResourceAware favours the least loaded", func() {}},
		{0.25, "node-c overloaded (CPU 97%, 1,940 connections): ResourceAware leaves it out, and ConsistentHash has it shed part of its keys to the next nodes (SHED)", func() { nodes[2].setCPU(97) }},
		{0.5, "node-d draining: its keys move to the next nodes, nothing else moves; no new picks", func() { _ = nodes[3].reporter.SetDraining(true) }},
		{0.75, "node-e leaves (status leaving): it is off the ring at once", func() { _ = nodes[4].reporter.Close(); nodes[4].gone = true }},
	}
	total := *duration
	if total == 0 {
		total = 24 * time.Hour
	}
	start := time.Now()
	phase := -1
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("user-%d", i)
	}
	for {
		el := time.Since(start)
		for phase+1 < len(phases) && el >= time.Duration(phases[phase+1].at*float64(total)) {
			phase++
			phases[phase].step()
			fmt.Fprintf(stdout, "\n>>> %s\n", phases[phase].say)
			select { // let a few reports arrive before measuring
			case <-ctx.Done():
				return 0
			case <-time.After(500 * time.Millisecond):
			}
		}
		if err := demoRound(ctx, stdout, client, rt, keys, el); err != nil {
			fmt.Fprintln(stderr, "router demo:", err)
		}
		select {
		case <-ctx.Done():
			return 0
		case <-tick.C:
		}
		if *duration > 0 && time.Since(start) >= *duration {
			fmt.Fprintln(stdout, "\ndemo over. Run the real thing: go build -o router ./cmd/router && ./router")
			return 0
		}
	}
}

// demoRound asks the router and prints one table.
func demoRound(ctx context.Context, w io.Writer, c *bus.Client, r *router.Router, keys []string, el time.Duration) error {
	ch := map[string]int{}
	res, err := c.PickBatch(ctx, keys)
	if err != nil {
		return err
	}
	for _, x := range res {
		ch[x.Node]++
	}
	ra := map[string]int{}
	for range 1000 {
		n, err := c.PickHealthy(ctx)
		if err != nil {
			return err
		}
		ra[n]++
	}
	search := map[string]int{}
	sr, err := c.Select(ctx, bus.Request{Pool: "search", Keys: keys})
	if err != nil {
		return err
	}
	for _, x := range sr.Results {
		search[x.Node]++
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "t=%ds\tCPU%%\tSTATUS\tON RING\tSHED\tCH KEYS\tRA PICKS\tWHY NOT\n", int(el.Seconds()))
	for _, n := range r.Nodes().Nodes {
		why := ""
		if !n.Eligible {
			why = n.Reason
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t%5.1f%%\t%5.1f%%\t%s\n", n.ID, n.CPUUsage, n.Status, yesNo(n.Member), shedLabel(n.Shed), float64(ch[n.ID])/10, float64(ra[n.ID])/10, why)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprint(w, "  pool search, CH keys:")
	for _, n := range r.NodesPage("search", 0, 0).Nodes {
		fmt.Fprintf(w, "  %s %.1f%%", n.ID, float64(search[n.ID])/10)
	}
	fmt.Fprintln(w)
	return nil
}
