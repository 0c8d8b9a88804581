package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
)

// TestBadFlagOneError: a bad flag value prints that one error and where to
// find the flags, not the whole usage, in every subcommand; -h still lists
// the flags.
func TestBadFlagOneError(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--cpu-threshold", "abc"}, "router: invalid value \"abc\" for flag -cpu-threshold: parse error\nRun 'router --help' for the flags.\n"},
		{[]string{"serve", "--check", "--max-pools", "1.5"}, "router: invalid value \"1.5\" for flag -max-pools: parse error\nRun 'router --help' for the flags.\n"},
		{[]string{"--check", "extra"}, "router: unexpected arguments [\"extra\"]\nRun 'router --help' for the flags.\n"},
		{[]string{"select", "--count", "abc"}, "router: invalid value \"abc\" for flag -count: parse error\nRun 'router select --help' for the flags.\n"},
		{[]string{"select", "--key", "k", "extra"}, "router: unexpected arguments [\"extra\"]\nRun 'router select --help' for the flags.\n"},
		{[]string{"report", "--cpu", "abc"}, "router: invalid value \"abc\" for flag -cpu: parse error\nRun 'router report --help' for the flags.\n"},
		{[]string{"report-failure", "--pool"}, "router: flag needs an argument: -pool\nRun 'router report-failure --help' for the flags.\n"},
		{[]string{"report-failure", "node-1", "--nope"}, "router: flag provided but not defined: -nope\nRun 'router report-failure --help' for the flags.\n"},
		{[]string{"status", "--timeout", "abc"}, "router: invalid value \"abc\" for flag -timeout: parse error\nRun 'router status --help' for the flags.\n"},
		{[]string{"watch", "--nope"}, "router: flag provided but not defined: -nope\nRun 'router watch --help' for the flags.\n"},
		{[]string{"demo", "--duration", "abc"}, "router: invalid value \"abc\" for flag -duration: parse error\nRun 'router demo --help' for the flags.\n"},
		{[]string{"demo", "extra"}, "router: unexpected arguments [\"extra\"]\nRun 'router demo --help' for the flags.\n"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := run(context.Background(), c.args, &out, &errOut); code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if errOut.String() != c.want || out.Len() != 0 {
				t.Errorf("stderr:\n%s\nwant:\n%s\nstdout: %q", errOut.String(), c.want, out.String())
			}
		})
	}
	for _, args := range [][]string{{"--help"}, {"select", "-h"}, {"report", "--help"}, {"report-failure", "-h"}, {"status", "-h"}, {"watch", "-h"}, {"demo", "-h"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := run(context.Background(), args, &out, &errOut); code != 0 {
				t.Errorf("exit %d, want 0", code)
			}
			if !strings.HasPrefix(errOut.String(), "Usage of router ") || !strings.Contains(errOut.String(), "  -timeout duration") && args[0] != "demo" {
				t.Errorf("no flag list:\n%s", errOut.String())
			}
		})
	}
}

// TestZeroFlags goes through every flag of serve with its zero value (0,
// 0s or ""): either the flag refuses it with a message that names the flag,
// or 0 has a meaning of its own that the flag's help and README's table
// both state. A new flag must be added here.
func TestZeroFlags(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const refused = "refused"
	cases := map[string]string{ // flag → refused, or what its zero means ("" for a name or file left unset)
		"server": "empty runs an embedded server", "creds": "", "nkey": "", "user": "", "password": "",
		"token": "", "tlscert": "", "tlskey": "", "tlsca": "", "timeout": refused,
		"listen": refused, "store-dir": refused, "embedded-config": "", "http": "empty disables",
		"log-format": refused, "log-level": refused, "check": "", "legacy-document": "",
		"bucket": refused, "kv-replicas": refused, "queue-group": refused, "vnodes": refused,
		"member-ttl": refused, "coalesce": refused, "resync": refused, "drain-timeout": refused,
		"max-pools": refused, "balance-factor": "0 is off", "shed-interval": refused,
		"probe-miss-factor": refused, "probe-timeout": refused, "probe-timeouts": refused,
		"probe-rate": refused, "feedback-rate": refused,
		"eject-failures": refused, "eject-callers": refused, "eject-window": refused, "eject-time": refused,
		"eject-max-time": refused, "eject-max-percent": "0 turns ejection off",
		"staleness": refused, "cpu-threshold": refused, "memory-threshold": refused,
		"max-connections": refused, "latency-ceiling": refused,
		"cpu-weight": "0 leaves it out of the score", "memory-weight": "0 leaves it out of the score",
		"connections-weight": "0 leaves it out of the score", "latency-weight": "0 leaves it out of the score",
		"cpu-margin": "0 is off", "memory-margin": "0 is off", "connections-margin": "0 is off",
		"slow-start-window": "0 is off", "slow-start-aggression": refused, "slow-start-min-share": refused,
		"max-key-bytes": refused, "max-candidates": refused, "max-batch": refused, "max-count": refused,
	}
	var o options
	serveFlags(&o, io.Discard).VisitAll(func(f *flag.Flag) {
		t.Run(f.Name, func(t *testing.T) {
			means, ok := cases[f.Name]
			if !ok {
				t.Fatalf("--%s is not in this table: refuse its zero value in options.validate, or say in its help and in README what 0 means", f.Name)
			}
			var o options
			fs := serveFlags(&o, io.Discard)
			zero := zeroText(f)
			if zero == `""` {
				zero = ""
			}
			if zero == "false" { // --check: false is its default, and means serve
				return
			}
			if err := fs.parse([]string{"--" + f.Name + "=" + zero}); err != nil {
				t.Fatal(err)
			}
			errs := o.validate(fs)
			if means == refused {
				if len(errs) != 1 || !strings.HasPrefix(errs[0], "--"+f.Name+" ") && !strings.HasPrefix(errs[0], "--"+f.Name+":") {
					t.Fatalf("--%s=%s: want one problem naming --%s, got %q", f.Name, zero, f.Name, errs)
				}
				return
			}
			if len(errs) > 0 {
				t.Fatalf("--%s=%s: %q", f.Name, zero, errs)
			}
			row := readmeRow(string(readme), f.Name)
			if !strings.Contains(f.Usage, means) || !strings.Contains(row, means) {
				t.Errorf("--%s=%s is accepted: its help and README's row must say %q\nhelp: %s\nREADME: %s", f.Name, zero, means, f.Usage, row)
			}
		})
	})
}

// readmeRow returns the line of README's configuration table for a flag.
func readmeRow(readme, flag string) string {
	for _, line := range strings.Split(readme, "\n") {
		if strings.HasPrefix(line, "| `--"+flag+"` |") {
			return line
		}
	}
	return ""
}

// TestRequestFailed: a client's error is printed once, after "router: ",
// with a hint when no router answered; the exit code is 2 for a bad request.
func TestRequestFailed(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
		code int
	}{
		{&bus.ServiceError{Code: 503, Message: "natsroute: no node available: the ring has no members"}, "router: natsroute: no node available: the ring has no members (503)\n", 1},
		{&bus.ServiceError{Code: 400, Message: "natsroute: bad request: count -1 is out of range"}, "router: natsroute: bad request: count -1 is out of range (400)\n", 2},
		{fmt.Errorf("%w on route.pools: %w", bus.ErrNoRouter, nats.ErrNoResponders), "router: natsroute: no router answered on route.pools: nats: no responders available for request (is a router running?)\n", 1},
	} {
		var out bytes.Buffer
		if code := requestFailed(&out, c.err); code != c.code || out.String() != c.want {
			t.Errorf("%v: exit %d, %q; want %d, %q", c.err, code, out.String(), c.code, c.want)
		}
	}
}

// TestLegacyDocumentFlag: --legacy-document is on unless turned off, by
// flag or environment, and the flag wins over the environment.
func TestLegacyDocumentFlag(t *testing.T) {
	for _, c := range []struct {
		env  string
		args []string
		off  bool
	}{
		{"", nil, false},
		{"", []string{"--legacy-document=false"}, true},
		{"", []string{"--legacy-document"}, false},
		{"false", nil, true},
		{"false", []string{"--legacy-document=true"}, false},
	} {
		if c.env != "" {
			t.Setenv("NATSROUTE_LEGACY_DOCUMENT", c.env)
		}
		var o options
		fs := serveFlags(&o, io.Discard)
		if err := fs.parse(c.args); err != nil {
			t.Fatal(err)
		}
		if o.cfg.NoLegacyDocument != c.off {
			t.Errorf("env %q, args %q: NoLegacyDocument %v, want %v", c.env, c.args, o.cfg.NoLegacyDocument, c.off)
		}
	}
}
