package main

import (
	"context"
	"fmt"
	"io"
)

const usage = `router — natsroute: which node should take this key or request

Usage:
  router [serve] [flags]     run the router (embedded NATS unless --server/NATS_URL)
  router select  [flags]     ask a router which node takes a key
  router report  [flags]     publish a node's health once, or on an interval
  router report-failure [flags] NODE
                             say NODE failed you: routers probe it at once
  router status  [flags]     show nodes and the ring
  router watch   [flags]     print each ring change as it happens
  router demo    [flags]     embedded NATS + router + simulated nodes, live
  router help                this text

Run "router COMMAND -h" for a command's flags.
`

// run dispatches a subcommand and returns the exit code: 0 done, 1 failed,
// 2 bad usage or configuration.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(ctx, args, stdout, stderr)
	case "select":
		return selectCmd(ctx, args, stdout, stderr)
	case "report":
		return reportCmd(ctx, args, stdout, stderr)
	case "report-failure":
		return reportFailureCmd(ctx, args, stdout, stderr)
	case "status":
		return statusCmd(ctx, args, stdout, stderr)
	case "watch":
		return watchCmd(ctx, args, stdout, stderr)
	case "demo":
		return demoCmd(ctx, args, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "router: unknown command %q\n\n%s", cmd, usage)
	return 2
}
