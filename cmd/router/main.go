// Command router runs natsroute: by default a router on an embedded NATS
// server with JetStream, or on an existing NATS with --server. Its
// subcommands ask a running router (select, report, report-failure, status,
// watch) or show it working (demo). Run "router help" for the list.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/natsroute/natsroute/bus/router"
)

func main() {
	router.TuneGC()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() { // a second signal exits at once
		<-ctx.Done()
		stop()
		again := make(chan os.Signal, 1)
		signal.Notify(again, syscall.SIGINT, syscall.SIGTERM)
		<-again
		fmt.Fprintln(os.Stderr, "second signal: exiting now")
		os.Exit(130)
	}()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
