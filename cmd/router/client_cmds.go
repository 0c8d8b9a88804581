package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
)

// clientCommand parses the connection flags plus a command's own, and
// connects. It returns the exit code to use if it fails.
func clientCommand(name string, args []string, stderr io.Writer, define func(fs *flagSet)) (*nats.Conn, *connOptions, int) {
	nc, c, _, code := clientCommandOperand(name, "", args, stderr, define)
	return nc, c, code
}

// clientCommandOperand is clientCommand for a command that takes one
// operand (operand names it in errors; "" for none). Flags may come before
// or after it, as in "report-failure --ack node-1" or "report-failure
// node-1 --ack" (the flag package stops at the first operand, so the rest
// is parsed again).
// newClient returns a bus.Client on nc with the command's timeout, or nil
// and the exit code after printing why not.
func newClient(nc *nats.Conn, conn *connOptions, stderr io.Writer) (*bus.Client, int) {
	client, err := bus.NewClient(nc, bus.WithTimeout(conn.timeout))
	if err != nil {
		fmt.Fprintln(stderr, "router:", err)
		return nil, 2
	}
	return client, 0
}

func clientCommandOperand(name, operand string, args []string, stderr io.Writer, define func(fs *flagSet)) (*nats.Conn, *connOptions, string, int) {
	var c connOptions
	fs := newFlagSet(name, stderr)
	c.register(fs)
	define(fs)
	if err := fs.parse(args); err != nil {
		return nil, nil, "", fs.failed(err)
	}
	var arg string
	if operand != "" && fs.NArg() > 0 {
		arg = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return nil, nil, "", fs.failed(err)
		}
	}
	if fs.NArg() > 0 {
		return nil, nil, "", fs.failed(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if operand != "" && arg == "" {
		return nil, nil, "", fs.failed(fmt.Errorf("missing %s: router %s [flags] %s", operand, name, strings.ToUpper(operand)))
	}
	if errs := c.validate(); len(errs) > 0 {
		for _, e := range errs {
			fmt.Fprintln(stderr, "router:", e)
		}
		return nil, nil, "", 2
	}
	nc, err := c.connect("natsroute-"+name, slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	if err != nil {
		fmt.Fprintln(stderr, "router:", err)
		return nil, nil, "", 1
	}
	return nc, &c, arg, -1
}

// requestFailed prints a Client's error once ("router: natsroute: ...";
// the client's errors name the subject when it matters) and returns the
// exit code: 2 for a request the router called bad, else 1.
func requestFailed(stderr io.Writer, err error) int {
	if errors.Is(err, bus.ErrNoRouter) || errors.Is(err, bus.ErrTimeout) {
		fmt.Fprintf(stderr, "router: %v (is a router running?)\n", err)
	} else {
		fmt.Fprintln(stderr, "router:", err)
	}
	if errors.Is(err, bus.ErrBadRequest) {
		return 2
	}
	return 1
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// selectCmd: router select --key K [--strategy S] [--count N] [--candidates a,b] [--json]
func selectCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var key, keys, strategy, candidates, pool string
	var count, spread int
	var asJSON, explain bool
	nc, conn, code := clientCommand("select", args, stderr, func(fs *flagSet) {
		fs.StringVar(&pool, "pool", "", "pool to route in (default: the default pool)")
		fs.IntVar(&spread, "spread", 0, "hot key: pick by health among the key's first N owners (ConsistentHash)")
		fs.StringVar(&key, "key", "", "routing key (ConsistentHash)")
		fs.StringVar(&keys, "keys", "", "comma-separated keys: one answer each (ConsistentHash)")
		fs.StringVar(&strategy, "strategy", "", "ConsistentHash or ResourceAware (default: ConsistentHash with a key, else ResourceAware)")
		fs.IntVar(&count, "count", 1, "how many distinct nodes, primary first")
		fs.StringVar(&candidates, "candidates", "", "comma-separated node ids to choose among")
		fs.BoolVar(&asJSON, "json", false, "print the whole reply as JSON")
		fs.BoolVar(&explain, "explain", false, "ask the router why (implies --json)")
	})
	if nc == nil {
		return code
	}
	defer nc.Close()
	client, code := newClient(nc, conn, stderr)
	if client == nil {
		return code
	}
	reply, err := client.Select(ctx, bus.Request{
		Strategy: strategy, Key: key, Keys: splitList(keys), Count: count,
		Candidates: splitList(candidates), Explain: explain, Pool: pool, Spread: spread,
	})
	if err != nil {
		return requestFailed(stderr, err)
	}
	switch {
	case asJSON || explain:
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(reply)
	case reply.Results != nil:
		for _, r := range reply.Results {
			nodes := r.Nodes
			if nodes == nil {
				nodes = []string{r.Node}
			}
			fmt.Fprintf(stdout, "%s\t%s\n", r.Key, strings.Join(nodes, ","))
		}
	case spread > 1:
		fmt.Fprintf(stdout, "%s\t(of %s)\n", reply.Node, strings.Join(reply.Nodes, ","))
	case len(reply.Nodes) > 0:
		fmt.Fprintln(stdout, strings.Join(reply.Nodes, ","))
	default:
		fmt.Fprintln(stdout, reply.Node)
	}
	return 0
}

// reportCmd publishes a node's health once, or every --interval with this
// machine's real CPU and memory usage until a signal (then "leaving").
func reportCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var node, status, pools string
	var cpu, memory, weight float64
	var conns int64
	var latency, interval time.Duration
	var asJSON bool
	nc, _, code := clientCommand("report", args, stderr, func(fs *flagSet) {
		fs.StringVar(&node, "node", "", "node id, 1-64 characters of [A-Za-z0-9_-] (required)")
		fs.Float64Var(&cpu, "cpu", 0, "CPU usage, percent (once)")
		fs.Float64Var(&memory, "memory", 0, "memory usage, percent (once)")
		fs.Int64Var(&conns, "connections", 0, "active connections (once)")
		fs.DurationVar(&latency, "latency", 0, "average latency, e.g. 3ms (once)")
		fs.Float64Var(&weight, "weight", 0, "ring weight and selection multiplier (default 1)")
		fs.StringVar(&status, "status", "", "up, draining or leaving")
		fs.StringVar(&pools, "pool", "", "comma-separated pools the node serves (default: the default pool)")
		fs.DurationVar(&interval, "interval", 0, "report this machine's real metrics every interval until stopped")
		fs.BoolVar(&asJSON, "json", false, "send JSON instead of msgpack")
	})
	if nc == nil {
		return code
	}
	defer nc.Close()
	if err := bus.ValidateNodeID(node); err != nil {
		fmt.Fprintln(stderr, "router: --node:", err)
		return 2
	}
	enc := bus.Msgpack
	if asJSON {
		enc = bus.JSON
	}
	if interval > 0 {
		opts := []bus.ReporterOption{bus.WithReporterEncoding(enc), bus.WithReporterLogger(slog.New(slog.NewTextHandler(stderr, nil)))}
		if weight != 0 {
			opts = append(opts, bus.WithWeight(weight))
		}
		if ps := splitList(pools); ps != nil {
			opts = append(opts, bus.WithPools(ps...))
		}
		rep, err := bus.NewReporter(nc, node, bus.SystemHealth(nil), interval, opts...)
		if err != nil {
			fmt.Fprintln(stderr, "router:", err)
			return 2
		}
		if status == bus.StatusDraining {
			_ = rep.SetDraining(true)
		}
		fmt.Fprintf(stdout, "reporting %s every %v; Ctrl-C leaves the ring\n", node, interval)
		<-ctx.Done()
		if err := rep.Close(); err != nil {
			fmt.Fprintln(stderr, "router:", err)
			return 1
		}
		fmt.Fprintln(stdout, node, "left the ring")
		return 0
	}
	data, err := bus.EncodeHealth(node, bus.Health{
		CPUUsage: cpu, MemoryUsage: memory, ActiveConnections: conns, AvgLatency: latency,
		Weight: weight, Status: status, Seq: uint64(time.Now().UnixNano()), Pools: splitList(pools),
	}, enc)
	if err != nil {
		fmt.Fprintln(stderr, "router:", err)
		return 2
	}
	if err := nc.Publish(bus.HealthSubject(node), data); err != nil {
		fmt.Fprintln(stderr, "router:", err)
		return 1
	}
	if err := nc.Flush(); err != nil {
		fmt.Fprintln(stderr, "router:", err)
		return 1
	}
	fmt.Fprintf(stdout, "reported %s\n", node)
	return 0
}

// reportFailureCmd: router report-failure [--pool P] [--caller C]
// [--reason R] [--ack] NODE tells routers that NODE failed (route.feedback,
// as bus.Client.ReportFailure sends it): each router probes it at once and
// takes it down if it is gone. Without --ack it publishes and returns once
// the server has the message; with --ack it waits for a router's answer.
func reportFailureCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var pool, caller, reason string
	var ack bool
	nc, conn, node, code := clientCommandOperand("report-failure", "node", args, stderr, func(fs *flagSet) {
		fs.StringVar(&pool, "pool", "", "the pool the node failed in (default: the default pool)")
		fs.StringVar(&caller, "caller", "", "who says so, at most 256 bytes (default: this connection's name, natsroute-report-failure)")
		fs.StringVar(&reason, "reason", "", "what went wrong, at most 256 bytes")
		fs.BoolVar(&ack, "ack", false, "wait for a router to acknowledge it (exit 1 if none does)")
	})
	if nc == nil {
		return code
	}
	defer nc.Close()
	client, code := newClient(nc, conn, stderr)
	if client == nil {
		return code
	}
	opts := []bus.FailureOption{bus.WithReason(reason)}
	if pool != "" {
		opts = append(opts, bus.InPool(pool))
	}
	if caller != "" {
		opts = append(opts, bus.AsCaller(caller))
	}
	if ack {
		opts = append(opts, bus.WithAck())
	}
	if err := client.ReportFailure(ctx, node, opts...); err != nil {
		if errors.Is(err, bus.ErrInvalidFeedback) {
			fmt.Fprintln(stderr, "router:", err)
			return 2
		}
		return requestFailed(stderr, err)
	}
	what := fmt.Sprintf("reported %s failed in pool %s", node, cmp.Or(pool, bus.DefaultPool))
	if reason != "" {
		what += fmt.Sprintf(" (reason %q)", reason)
	}
	if ack {
		fmt.Fprintf(stdout, "%s: a router acknowledged it\n", what)
		return 0
	}
	if err := nc.Flush(); err != nil {
		fmt.Fprintln(stderr, "router:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: published on %s (--ack waits for a router's answer)\n", what, bus.SubjectFeedback)
	return 0
}

// statusCmd prints the pools, then one pool's nodes and ring as routers
// see them (paging through route.nodes).
func statusCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	var pool string
	nc, conn, code := clientCommand("status", args, stderr, func(fs *flagSet) {
		fs.BoolVar(&asJSON, "json", false, "print JSON")
		fs.StringVar(&pool, "pool", "", "show this pool (default: list the pools, then show the default pool)")
	})
	if nc == nil {
		return code
	}
	defer nc.Close()
	client, code := newClient(nc, conn, stderr)
	if client == nil {
		return code
	}
	var pools []bus.PoolInfo
	var err error
	if pool == "" {
		if pools, err = client.Pools(ctx); err != nil {
			return requestFailed(stderr, err)
		}
	}
	nodes, err := client.Nodes(ctx, pool)
	if err != nil {
		return requestFailed(stderr, err)
	}
	rs, ringErr := client.Ring(ctx, pool)
	if ringErr != nil && !errors.Is(ringErr, bus.ErrBadRequest) {
		return requestFailed(stderr, ringErr)
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		out := map[string]any{"nodes": nodes.Nodes, "ring": rs.Ring, "revision": rs.Revision}
		if pools != nil {
			out["pools"] = pools
		}
		if ringErr != nil {
			out["ring_error"] = ringErr.Error()
		}
		_ = enc.Encode(out)
		return 0
	}
	if len(pools) > 1 || (len(pools) == 1 && pools[0].Name != bus.DefaultPool) {
		printPools(stdout, pools)
	}
	printStatus(stdout, nodes, rs)
	if ringErr != nil {
		fmt.Fprintf(stdout, "\nring: %v\n", ringErr)
	}
	return 0
}

func printPools(w io.Writer, pools []bus.PoolInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tMEMBERS\tKNOWN\tREVISION\tFORMAT\tKV KEY")
	for _, p := range pools {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\n", p.Name, p.Members, p.Known, p.Revision, p.Format, p.Key)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
}

func printStatus(w io.Writer, nodes bus.NodesState, rs bus.RingState) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if nodes.Pool != "" {
		fmt.Fprintf(w, "pool %s: %d nodes\n", nodes.Pool, nodes.Total)
	}
	fmt.Fprintln(tw, "NODE\tMEMBER\tSTATUS\tWEIGHT\tREPORT AGE\tSCORE\tELIGIBLE\tCPU%\tMEM%\tCONNS\tLATENCY\tSHED")
	for _, n := range nodes.Nodes {
		age := "never"
		if n.ReportAgeMS >= 0 {
			age = (time.Duration(n.ReportAgeMS) * time.Millisecond).String()
			if n.Stale {
				age += " (stale)"
			}
		}
		elig := "yes"
		if !n.Eligible {
			elig = "no: " + cmp.Or(n.Down, n.Ejected, n.Reason) // "down: no responders to probe"
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\t%g\t%s\t%.4f\t%s\t%.1f\t%.1f\t%d\t%.1fms\t%s\n", n.ID, yesNo(n.Member), n.Status, n.Weight, age, n.Score, elig, n.CPUUsage, n.MemoryUsage, n.Connections, n.LatencyMS, cmp.Or(n.ShedState, shedLabel(n.Shed)))
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "SCORE = health (0 to 1) × WEIGHT × slow-start share: ResourceAware picks in proportion to it, so it can be above 1.")
	fmt.Fprintln(w, "SHED: the fraction of its keys a member hands to the next members (load-aware ConsistentHash), and where it is going:")
	fmt.Fprintln(w, "  rising or falling, or holding (a fall was undone lately, so the next waits: it says how often and until when).")
	fmt.Fprintf(w, "\nring: revision %d, %d members, vnodes %d\n", rs.Revision, len(rs.Ring.Nodes), rs.Ring.VNodes)
	if len(rs.Ring.Nodes) == 0 {
		return
	}
	shares := map[string]float64{}
	if rg, err := rs.Ring.Ring(); err == nil {
		shares = rg.Snapshot().Shares()
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tWEIGHT\tSTATUS\tKEY SHARE\tSHED")
	for _, n := range rs.Ring.Nodes {
		st := n.Status
		if st == "" {
			st = "up"
		}
		fmt.Fprintf(tw, "%s\t%g\t%s\t%.1f%%\t%s\n", n.ID, n.Weight, st, 100*shares[n.ID], shedLabel(n.Shed))
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "KEY SHARE counts ring points (by weight): it does not move when a member sheds; SHED of those keys go on.")
}

// shedLabel shows a member's shed fraction, or "-".
func shedLabel(f float64) string {
	if f == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*f)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// watchCmd prints each ring change as it happens, until a signal.
func watchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var bucket, pool string
	nc, _, code := clientCommand("watch", args, stderr, func(fs *flagSet) {
		fs.StringVar(&bucket, "bucket", bus.DefaultBucket, "KV bucket of the ring")
		fs.env("bucket", "NATSROUTE_BUCKET", "")
		fs.StringVar(&pool, "pool", "", "watch this pool's ring (default: the default pool)")
	})
	if nc == nil {
		return code
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintln(stderr, "router:", err)
		return 1
	}
	opts := []bus.RingCacheOption{bus.WithRingCacheLogger(slog.New(slog.NewTextHandler(stderr, nil)))}
	if pool != "" {
		opts = append(opts, bus.WithPool(pool))
	}
	cache, err := bus.WatchRing(ctx, js, bucket, opts...)
	if err != nil {
		fmt.Fprintln(stderr, "router:", err)
		return 1
	}
	defer cache.Close()
	client, err := bus.NewClient(nc, bus.WithTimeout(time.Second))
	if err != nil {
		fmt.Fprintln(stderr, "router:", err)
		return 1
	}
	prev := map[string]bus.RingNode{}
	fmt.Fprintf(stdout, "watching %s/%s (Ctrl-C stops)\n", bucket, bus.PoolKey(pool))
	for printed := false; ; printed = true {
		doc, rev := cache.Ring()
		if rev > 0 || printed {
			fmt.Fprintf(stdout, "%s revision %d: %s\n", time.Now().Format("15:04:05.000"), rev, describeChange(prev, doc))
			for _, why := range whyOut(ctx, client, pool, prev, doc) {
				fmt.Fprintf(stdout, "  %s\n", why)
			}
			prev = map[string]bus.RingNode{}
			for _, n := range doc.Nodes {
				prev[n.ID] = n
			}
		}
		if err := cache.WaitRevision(ctx, rev+1); err != nil {
			return 0 // interrupted
		}
	}
}

// whyOut asks a router why the members that left since prev are out, for
// those that liveness took out ("node-3 down: no responders to probe",
// "node-4 ejected: 5 failures from 2 callers, back in 30 s"). It asks only
// for a few leaves in a pool small enough for one route.nodes page, and
// says nothing if no router answers.
func whyOut(ctx context.Context, c *bus.Client, pool string, prev map[string]bus.RingNode, doc bus.RingDocument) []string {
	var gone []string
	for id := range prev {
		if _, still := doc.Node(id); !still {
			gone = append(gone, id)
		}
	}
	if len(gone) == 0 || len(gone) > 20 {
		return nil
	}
	slices.Sort(gone)
	st, err := c.NodesPage(ctx, pool, 0, bus.DefaultNodesPage)
	if err != nil {
		return nil
	}
	var out []string
	for _, n := range st.Nodes {
		if slices.Contains(gone, n.ID) {
			if why := cmp.Or(n.Down, n.Ejected); why != "" {
				out = append(out, n.ID+" "+why)
			}
		}
	}
	return out
}

// describeChange lists joins, leaves and changes between two memberships.
func describeChange(prev map[string]bus.RingNode, doc bus.RingDocument) string {
	var parts []string
	seen := map[string]bool{}
	for _, n := range doc.Nodes {
		seen[n.ID] = true
		old, ok := prev[n.ID]
		switch {
		case !ok:
			parts = append(parts, "+"+label(n))
		case old != n:
			parts = append(parts, "~"+label(n))
		}
	}
	var gone []string
	for id := range prev {
		if !seen[id] {
			gone = append(gone, "-"+id)
		}
	}
	slices.Sort(gone)
	parts = append(parts, gone...)
	ids := make([]string, len(doc.Nodes))
	for i, n := range doc.Nodes {
		ids[i] = label(n)
	}
	change := strings.Join(parts, " ")
	if change == "" {
		change = "(no change)"
	}
	return fmt.Sprintf("%s  members [%s]", change, strings.Join(ids, " "))
}

func label(n bus.RingNode) string {
	s := n.ID
	if n.Weight != 1 {
		s += fmt.Sprintf("×%g", n.Weight)
	}
	if n.Status != "" {
		s += "(" + n.Status + ")"
	}
	if n.Shed != 0 {
		s += fmt.Sprintf("[shed %.1f%%]", 100*n.Shed)
	}
	return s
}
