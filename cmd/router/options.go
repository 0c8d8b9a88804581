package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/natsroute/natsroute/bus/router"
	"github.com/natsroute/natsroute/resourceaware"
)

// setting is one configuration value: a flag, its environment variable and
// the router.Config field it sets (for error messages).
type setting struct {
	flag, env, field string
}

// connOptions are the NATS connection settings every subcommand takes. The
// environment variables are the ones the nats CLI reads.
type connOptions struct {
	server, creds, nkey, user, password, token, tlsCert, tlsKey, tlsCA string
	timeout                                                            time.Duration
}

// options are the settings of "router serve".
type options struct {
	conn           connOptions
	listen         string
	storeDir       string
	embeddedConfig string
	httpAddr       string
	logFormat      string
	logLevel       string
	check          bool
	listenSet      bool // --listen was given (flag or environment)
	storeDirSet    bool // --store-dir was given
	cfg            router.Config
	weights        resourceaware.Weights
}

// notBool is a boolean flag that sets the negation of a Config field whose
// zero value must mean the default (on).
type notBool struct{ p *bool }

func (b notBool) IsBoolFlag() bool { return true }

func (b notBool) String() string {
	if b.p == nil {
		return "true"
	}
	return strconv.FormatBool(!*b.p)
}

func (b notBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*b.p = !v
	return nil
}

// flagSet is a FlagSet that also reads each flag from its environment
// variable and remembers which settings exist.
type flagSet struct {
	*flag.FlagSet
	settings []setting
	out      io.Writer // where the flags are listed for -h and errors go
	help     string    // the command line that lists the flags
}

// newFlagSet returns the flags of a subcommand ("serve", "select", ...).
// The FlagSet itself prints nothing: parse lists the flags for -h, and
// failed prints a bad flag's one error and a hint, not the whole usage
// (97 lines for serve, which buried the error).
func newFlagSet(cmd string, out io.Writer) *flagSet {
	fs := flag.NewFlagSet("router "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	help := "router " + cmd + " --help"
	if cmd == "serve" { // the default command
		help = "router --help"
	}
	return &flagSet{FlagSet: fs, out: out, help: help}
}

// env registers the environment variable (and router.Config field) of a flag
// already defined, and notes it in the usage text.
func (fs *flagSet) env(flagName, env, field string) {
	fs.settings = append(fs.settings, setting{flagName, env, field})
	if f := fs.Lookup(flagName); f != nil {
		f.Usage += " [$" + env + "]"
	}
}

// parse applies the environment, then the arguments, so flags win.
func (fs *flagSet) parse(args []string) error {
	var errs []error
	for _, s := range fs.settings {
		if v, ok := os.LookupEnv(s.env); ok {
			if err := fs.Set(s.flag, v); err != nil {
				errs = append(errs, fmt.Errorf("$%s=%q: %v", s.env, v, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(fs.out, "Usage of %s:\n", fs.Name())
		fs.SetOutput(fs.out)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return err
}

// failed prints what went wrong in parse, if anything is left to print,
// and returns the exit code: 0 after -h (parse listed the flags), else 2.
func (fs *flagSet) failed(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintf(fs.out, "router: %v\nRun '%s' for the flags.\n", err, fs.help)
	return 2
}

var zeroMeansRE = regexp.MustCompile(` \(0 means [^)]*\)`)

// explain rewrites configuration errors to name the flag and variable of
// the setting they are about.
func (fs *flagSet) explain(err error) []string {
	var all []error
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		all = append(all, e)
	}
	walk(err)
	var out []string
	for _, e := range all {
		msg := e.Error()
		for _, s := range fs.settings {
			if s.field != "" && strings.Contains(msg, s.field+" ") {
				// Config's "(0 means the default)" is not true of the
				// flag, which refuses those zeros (see validate).
				msg = zeroMeansRE.ReplaceAllString(msg, "")
				msg = fmt.Sprintf("--%s ($%s): %s", s.flag, s.env, msg)
				break
			}
		}
		out = append(out, msg)
	}
	return out
}

func (c *connOptions) register(fs *flagSet) {
	fs.StringVar(&c.server, "server", "", "NATS server URL(s), comma separated; empty runs an embedded server (serve) or uses nats://127.0.0.1:4222")
	fs.env("server", "NATS_URL", "")
	fs.StringVar(&c.creds, "creds", "", "NATS credentials file")
	fs.env("creds", "NATS_CREDS", "")
	fs.StringVar(&c.nkey, "nkey", "", "NATS nkey seed file")
	fs.env("nkey", "NATS_NKEY", "")
	fs.StringVar(&c.user, "user", "", "NATS user name")
	fs.env("user", "NATS_USER", "")
	fs.StringVar(&c.password, "password", "", "NATS password")
	fs.env("password", "NATS_PASSWORD", "")
	fs.StringVar(&c.token, "token", "", "NATS token")
	fs.env("token", "NATS_TOKEN", "")
	fs.StringVar(&c.tlsCert, "tlscert", "", "TLS client certificate file")
	fs.env("tlscert", "NATS_CERT", "")
	fs.StringVar(&c.tlsKey, "tlskey", "", "TLS client key file")
	fs.env("tlskey", "NATS_KEY", "")
	fs.StringVar(&c.tlsCA, "tlsca", "", "TLS CA file to verify the server")
	fs.env("tlsca", "NATS_CA", "")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Second, "timeout of a request or of connecting")
	fs.env("timeout", "NATSROUTE_TIMEOUT", "")
}

func (c *connOptions) validate() []string {
	var errs []string
	if (c.tlsCert == "") != (c.tlsKey == "") {
		errs = append(errs, "--tlscert and --tlskey go together")
	}
	if c.password != "" && c.user == "" {
		errs = append(errs, "--password needs --user")
	}
	for _, f := range []struct{ flag, path string }{{"creds", c.creds}, {"nkey", c.nkey}, {"tlscert", c.tlsCert}, {"tlskey", c.tlsKey}, {"tlsca", c.tlsCA}} {
		if f.path != "" {
			if _, err := os.Stat(f.path); err != nil {
				errs = append(errs, fmt.Sprintf("--%s: %v", f.flag, err))
			}
		}
	}
	if c.timeout <= 0 {
		errs = append(errs, fmt.Sprintf("--timeout %v: want > 0", c.timeout))
	}
	return errs
}

// serveFlags defines the flags of "router serve".
func serveFlags(o *options, out io.Writer) *flagSet {
	fs := newFlagSet("serve", out)
	o.conn.register(fs)
	o.cfg = router.DefaultConfig()
	o.weights = resourceaware.DefaultWeights()
	c, b, l := &o.cfg, &o.cfg.Balancer, &o.cfg.Limits

	fs.StringVar(&o.listen, "listen", "127.0.0.1:4222", "address of the embedded NATS server")
	fs.env("listen", "NATSROUTE_LISTEN", "")
	fs.StringVar(&o.storeDir, "store-dir", "natsroute-data", "JetStream store directory of the embedded server")
	fs.env("store-dir", "NATSROUTE_STORE_DIR", "")
	fs.StringVar(&o.embeddedConfig, "embedded-config", "", "nats-server config file for the embedded server (accounts, users, permissions, TLS)")
	fs.env("embedded-config", "NATSROUTE_EMBEDDED_CONFIG", "")
	fs.StringVar(&o.httpAddr, "http", "127.0.0.1:8080", "HTTP address for /healthz, /readyz, /metrics and /status; empty disables")
	fs.env("http", "NATSROUTE_HTTP", "")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.env("log-format", "NATSROUTE_LOG_FORMAT", "")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.env("log-level", "NATSROUTE_LOG_LEVEL", "")
	fs.BoolVar(&o.check, "check", false, "validate the configuration, print every problem and exit (0 valid, 2 not)")

	fs.StringVar(&c.Bucket, "bucket", c.Bucket, "JetStream KV bucket of the ring")
	fs.env("bucket", "NATSROUTE_BUCKET", "Bucket")
	fs.IntVar(&c.KVReplicas, "kv-replicas", c.KVReplicas, "replicas of the bucket when the router creates it (3 on a cluster)")
	fs.env("kv-replicas", "NATSROUTE_KV_REPLICAS", "KVReplicas")
	fs.StringVar(&c.QueueGroup, "queue-group", c.QueueGroup, "queue group shared by router replicas")
	fs.env("queue-group", "NATSROUTE_QUEUE_GROUP", "QueueGroup")
	fs.IntVar(&c.VirtualNodes, "vnodes", c.VirtualNodes, "ring points per unit weight (for a new ring)")
	fs.env("vnodes", "NATSROUTE_VNODES", "VirtualNodes")
	fs.DurationVar(&c.MemberTTL, "member-ttl", c.MemberTTL, "a member leaves the ring after this long without a report")
	fs.env("member-ttl", "NATSROUTE_MEMBER_TTL", "MemberTTL")
	fs.DurationVar(&c.Coalesce, "coalesce", c.Coalesce, "ring write window: a lone change is written at once, a burst waits at most this long and gathers into one write")
	fs.env("coalesce", "NATSROUTE_COALESCE", "Coalesce")
	fs.DurationVar(&c.Resync, "resync", c.Resync, "check this often that the bucket is there and holds the ring this router wants")
	fs.env("resync", "NATSROUTE_RESYNC", "Resync")
	fs.Var(notBool{&c.NoLegacyDocument}, "legacy-document", "also write each pool's whole ring document (ring, ring.<pool>) for routers and RingCaches of earlier releases; false once all are upgraded (README, Upgrading to one key per member)")
	fs.env("legacy-document", "NATSROUTE_LEGACY_DOCUMENT", "NoLegacyDocument")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "on shutdown, wait this long for in-flight requests")
	fs.env("drain-timeout", "NATSROUTE_DRAIN_TIMEOUT", "DrainTimeout")
	fs.IntVar(&c.MaxPools, "max-pools", c.MaxPools, "most pools one router serves; reports naming more are rejected")
	fs.env("max-pools", "NATSROUTE_MAX_POOLS", "MaxPools")
	fs.Float64Var(&c.BalanceFactor, "balance-factor", c.BalanceFactor, "load-aware ConsistentHash: members above this × the mean reported connections shed keys (0 is off; e.g. 1.25)")
	fs.env("balance-factor", "NATSROUTE_BALANCE_FACTOR", "BalanceFactor")
	fs.DurationVar(&c.ShedInterval, "shed-interval", c.ShedInterval, "recompute and write shed fractions at most this often")
	fs.env("shed-interval", "NATSROUTE_SHED_INTERVAL", "ShedInterval")
	fs.Float64Var(&c.ProbeMissFactor, "probe-miss-factor", c.ProbeMissFactor, "probe a node whose reports say probe after this many report intervals without a report (1.1 to 10)")
	fs.env("probe-miss-factor", "NATSROUTE_PROBE_MISS_FACTOR", "ProbeMissFactor")
	fs.DurationVar(&c.ProbeTimeout, "probe-timeout", c.ProbeTimeout, "how long a probe waits for its answer (10ms to 10s)")
	fs.env("probe-timeout", "NATSROUTE_PROBE_TIMEOUT", "ProbeTimeout")
	fs.IntVar(&c.ProbeTimeouts, "probe-timeouts", c.ProbeTimeouts, "probe timeouts in a row that take a node down (no responders takes it down at once)")
	fs.env("probe-timeouts", "NATSROUTE_PROBE_TIMEOUTS", "ProbeTimeouts")
	fs.Float64Var(&c.ProbeRate, "probe-rate", c.ProbeRate, "most probes this router sends per second")
	fs.env("probe-rate", "NATSROUTE_PROBE_RATE", "ProbeRate")
	fs.Float64Var(&c.FeedbackRate, "feedback-rate", c.FeedbackRate, "most route.feedback messages this router handles per second; the rest are counted and dropped")
	fs.env("feedback-rate", "NATSROUTE_FEEDBACK_RATE", "FeedbackRate")
	fs.IntVar(&c.EjectFailures, "eject-failures", c.EjectFailures, "caller-reported failures within --eject-window that eject a node still answering probes (1 to 1000)")
	fs.env("eject-failures", "NATSROUTE_EJECT_FAILURES", "EjectFailures")
	fs.IntVar(&c.EjectCallers, "eject-callers", c.EjectCallers, "distinct callers those failures must come from (1 to 100)")
	fs.env("eject-callers", "NATSROUTE_EJECT_CALLERS", "EjectCallers")
	fs.DurationVar(&c.EjectWindow, "eject-window", c.EjectWindow, "how far back failures count toward an ejection (100ms to 10m)")
	fs.env("eject-window", "NATSROUTE_EJECT_WINDOW", "EjectWindow")
	fs.DurationVar(&c.EjectTime, "eject-time", c.EjectTime, "how long a first ejection lasts; each one in a row lasts twice the last (1s to 1h)")
	fs.env("eject-time", "NATSROUTE_EJECT_TIME", "EjectTime")
	fs.DurationVar(&c.EjectMaxTime, "eject-max-time", c.EjectMaxTime, "the longest an ejection lasts (--eject-time to 24h)")
	fs.env("eject-max-time", "NATSROUTE_EJECT_MAX_TIME", "EjectMaxTime")
	fs.Float64Var(&c.EjectMaxPercent, "eject-max-percent", c.EjectMaxPercent, "most of a pool ejected at once, percent (at least one node; 0 turns ejection off)")
	fs.env("eject-max-percent", "NATSROUTE_EJECT_MAX_PERCENT", "EjectMaxPercent")

	fs.DurationVar(&b.Staleness, "staleness", b.Staleness, "a report older than this counts as neutral (score 0.5)")
	fs.env("staleness", "NATSROUTE_STALENESS", "Staleness")
	fs.Float64Var(&b.CPUThresholdPercent, "cpu-threshold", b.CPUThresholdPercent, "exclude nodes above this CPU usage (percent)")
	fs.env("cpu-threshold", "NATSROUTE_CPU_THRESHOLD", "CPUThresholdPercent")
	fs.Float64Var(&b.MemoryThresholdPercent, "memory-threshold", b.MemoryThresholdPercent, "exclude nodes above this memory usage (percent)")
	fs.env("memory-threshold", "NATSROUTE_MEMORY_THRESHOLD", "MemoryThresholdPercent")
	fs.Int64Var(&b.MaxActiveConnections, "max-connections", b.MaxActiveConnections, "exclude nodes above this many active connections")
	fs.env("max-connections", "NATSROUTE_MAX_CONNECTIONS", "MaxActiveConnections")
	fs.DurationVar(&b.LatencyCeiling, "latency-ceiling", b.LatencyCeiling, "average latency at which the latency score reaches 0")
	fs.env("latency-ceiling", "NATSROUTE_LATENCY_CEILING", "LatencyCeiling")
	fs.Float64Var(&o.weights.CPU, "cpu-weight", o.weights.CPU, "score weight of free CPU (0 leaves it out of the score)")
	fs.env("cpu-weight", "NATSROUTE_CPU_WEIGHT", "Weights.CPU")
	fs.Float64Var(&o.weights.Memory, "memory-weight", o.weights.Memory, "score weight of free memory (0 leaves it out of the score)")
	fs.env("memory-weight", "NATSROUTE_MEMORY_WEIGHT", "Weights.Memory")
	fs.Float64Var(&o.weights.Connections, "connections-weight", o.weights.Connections, "score weight of spare connections (0 leaves it out of the score)")
	fs.env("connections-weight", "NATSROUTE_CONNECTIONS_WEIGHT", "Weights.Connections")
	fs.Float64Var(&o.weights.Latency, "latency-weight", o.weights.Latency, "score weight of low latency (0 leaves it out of the score)")
	fs.env("latency-weight", "NATSROUTE_LATENCY_WEIGHT", "Weights.Latency")
	fs.Float64Var(&b.CPUMarginPercent, "cpu-margin", b.CPUMarginPercent, "hysteresis: a node excluded for CPU is readmitted only at or below cpu-threshold minus this (0 is off)")
	fs.env("cpu-margin", "NATSROUTE_CPU_MARGIN", "CPUMarginPercent")
	fs.Float64Var(&b.MemoryMarginPercent, "memory-margin", b.MemoryMarginPercent, "hysteresis for memory, as --cpu-margin (0 is off)")
	fs.env("memory-margin", "NATSROUTE_MEMORY_MARGIN", "MemoryMarginPercent")
	fs.Int64Var(&b.ConnectionsMargin, "connections-margin", b.ConnectionsMargin, "hysteresis for connections, as --cpu-margin (0 is off)")
	fs.env("connections-margin", "NATSROUTE_CONNECTIONS_MARGIN", "ConnectionsMargin")
	fs.DurationVar(&b.SlowStartWindow, "slow-start-window", b.SlowStartWindow, "slow start: a node that joins or returns ramps up to its full share over this long (0 is off; 3 report intervals, e.g. 15s, is a good start)")
	fs.env("slow-start-window", "NATSROUTE_SLOW_START_WINDOW", "SlowStartWindow")
	fs.Float64Var(&b.SlowStartAggression, "slow-start-aggression", b.SlowStartAggression, "slow start ramp shape: share = (t/window)^(1/aggression); 1 is linear, higher starts faster")
	fs.env("slow-start-aggression", "NATSROUTE_SLOW_START_AGGRESSION", "SlowStartAggression")
	fs.Float64Var(&b.SlowStartMinShare, "slow-start-min-share", b.SlowStartMinShare, "slow start: the smallest share of its weight a ramping node gets, in (0, 1]")
	fs.env("slow-start-min-share", "NATSROUTE_SLOW_START_MIN_SHARE", "SlowStartMinShare")

	fs.IntVar(&l.MaxKeyBytes, "max-key-bytes", l.MaxKeyBytes, "longest key in a request, in bytes")
	fs.env("max-key-bytes", "NATSROUTE_MAX_KEY_BYTES", "MaxKeyBytes")
	fs.IntVar(&l.MaxCandidates, "max-candidates", l.MaxCandidates, "most candidates in a request")
	fs.env("max-candidates", "NATSROUTE_MAX_CANDIDATES", "MaxCandidates")
	fs.IntVar(&l.MaxBatch, "max-batch", l.MaxBatch, "most keys in a batch request")
	fs.env("max-batch", "NATSROUTE_MAX_BATCH", "MaxBatch")
	fs.IntVar(&l.MaxCount, "max-count", l.MaxCount, "largest count in a request")
	fs.env("max-count", "NATSROUTE_MAX_COUNT", "MaxCount")
	return fs
}

// validate reports every problem with the serve options, naming flags.
func (o *options) validate(fs *flagSet) []string {
	o.cfg.Balancer.Weights = &o.weights
	errs := o.conn.validate()
	if err := o.cfg.Validate(); err != nil {
		errs = append(errs, fs.explain(err)...)
	}
	// Zero means "default" inside router.Config; on the command line a zero
	// (or an empty name) is a mistake worth naming: whoever types
	// --slow-start-min-share 0 does not mean 0.1. A flag takes 0 only where
	// 0 has a meaning of its own (off, none, a score term left out), and its
	// help says which. router.Config.Validate reports negative values.
	c, b, l := &o.cfg, &o.cfg.Balancer, &o.cfg.Limits
	for _, p := range []struct {
		flag string
		bad  bool
		want string
	}{
		{"bucket", c.Bucket == "", "a bucket name"}, {"queue-group", c.QueueGroup == "", "a queue group name"},
		{"kv-replicas", c.KVReplicas == 0, "1 to 5"}, {"vnodes", c.VirtualNodes == 0, "> 0"},
		{"member-ttl", c.MemberTTL == 0, "> 0"}, {"coalesce", c.Coalesce == 0, "> 0"},
		{"resync", c.Resync == 0, "> 0"}, {"drain-timeout", c.DrainTimeout == 0, "> 0"},
		{"max-pools", c.MaxPools == 0, "> 0"}, {"shed-interval", c.ShedInterval == 0, "> 0"},
		{"probe-miss-factor", c.ProbeMissFactor == 0, "1.1 to 10"}, {"probe-timeout", c.ProbeTimeout == 0, "10ms to 10s"},
		{"probe-timeouts", c.ProbeTimeouts == 0, "1 to 10"}, {"probe-rate", c.ProbeRate == 0, "1 to 100000"},
		{"feedback-rate", c.FeedbackRate == 0, "1 to 100000"},
		{"eject-failures", c.EjectFailures == 0, "1 to 1000"}, {"eject-callers", c.EjectCallers == 0, "1 to 100"},
		{"eject-window", c.EjectWindow == 0, "100ms to 10m"}, {"eject-time", c.EjectTime == 0, "1s to 1h"},
		{"eject-max-time", c.EjectMaxTime == 0, "--eject-time to 24h"},
		{"staleness", b.Staleness == 0, "> 0"}, {"latency-ceiling", b.LatencyCeiling == 0, "> 0"},
		{"cpu-threshold", b.CPUThresholdPercent == 0, "a percentage in (0, 100]"},
		{"memory-threshold", b.MemoryThresholdPercent == 0, "a percentage in (0, 100]"},
		{"max-connections", b.MaxActiveConnections == 0, "> 0"},
		{"slow-start-aggression", b.SlowStartAggression == 0, "a number > 0"},
		{"slow-start-min-share", b.SlowStartMinShare == 0, "a share in (0, 1]"},
		{"max-key-bytes", l.MaxKeyBytes == 0, "> 0"}, {"max-candidates", l.MaxCandidates == 0, "> 0"},
		{"max-batch", l.MaxBatch == 0, "> 0"}, {"max-count", l.MaxCount == 0, "> 0"},
		{"store-dir", o.conn.server == "" && o.storeDir == "", "a directory"},
	} {
		if p.bad {
			errs = append(errs, fmt.Sprintf("--%s: %s is not allowed; want %s (leave the flag out for the default, %s)", p.flag, zeroText(fs.Lookup(p.flag)), p.want, fs.Lookup(p.flag).DefValue))
		}
	}
	if _, err := parseLevel(o.logLevel); err != nil {
		errs = append(errs, "--log-level: "+err.Error())
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		errs = append(errs, fmt.Sprintf("--log-format %q: want text or json", o.logFormat))
	}
	if o.httpAddr != "" {
		if _, _, err := net.SplitHostPort(o.httpAddr); err != nil {
			errs = append(errs, fmt.Sprintf("--http %q: %v", o.httpAddr, err))
		}
	}
	if o.conn.server == "" {
		if _, _, err := net.SplitHostPort(o.listen); err != nil {
			errs = append(errs, fmt.Sprintf("--listen %q: %v", o.listen, err))
		}
		if o.embeddedConfig != "" {
			if _, err := os.Stat(o.embeddedConfig); err != nil {
				errs = append(errs, fmt.Sprintf("--embedded-config: %v", err))
			}
		}
	}
	return errs
}

// zeroText is how a flag's zero value reads: 0, 0s, false or "".
func zeroText(f *flag.Flag) string {
	g, _ := f.Value.(flag.Getter)
	if g == nil {
		return "0"
	}
	switch g.Get().(type) {
	case string:
		return `""`
	case time.Duration:
		return "0s"
	case bool:
		return "false"
	}
	return "0"
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("%q: want debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(w io.Writer, format, level string) *slog.Logger {
	lvl, _ := parseLevel(level)
	ho := &slog.HandlerOptions{Level: lvl}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, ho))
	}
	return slog.New(slog.NewTextHandler(w, ho))
}
