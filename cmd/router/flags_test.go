package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
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
	for _, args := range [][]string{{"--help"}, {"select", "-h"}, {"report", "--help"}, {"status", "-h"}, {"watch", "-h"}, {"demo", "-h"}} {
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
