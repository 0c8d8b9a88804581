package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus/router"
)

// serve runs the router until ctx ends: config → validate → build → run →
// drain.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := serveFlags(&o, stderr)
	if err := fs.parse(args); err != nil {
		return fs.failed(err)
	}
	if fs.NArg() > 0 {
		return fs.failed(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	fs.Visit(func(f *flag.Flag) {
		o.listenSet = o.listenSet || f.Name == "listen"
		o.storeDirSet = o.storeDirSet || f.Name == "store-dir"
	})
	if errs := o.validate(fs); len(errs) > 0 {
		fmt.Fprintf(stderr, "router: %d configuration problem(s):\n", len(errs))
		for _, e := range errs {
			fmt.Fprintln(stderr, "  "+e)
		}
		return 2
	}
	if o.check {
		fmt.Fprintln(stdout, "configuration is valid")
		return 0
	}
	log := newLogger(stderr, o.logFormat, o.logLevel)
	o.cfg.Logger = log
	m := newMetrics()
	o.cfg.OnRequest = m.observe

	var ns *server.Server
	if o.conn.server == "" {
		var err error
		if ns, err = startEmbedded(&o, log); err != nil {
			log.Error("cannot start", "err", err)
			return 1
		}
		defer func() {
			ns.Shutdown()
			ns.WaitForShutdown()
			log.Info("embedded NATS server stopped")
		}()
		o.conn.server = ns.ClientURL()
		log.Info("embedded NATS server with JetStream started", "url", ns.ClientURL(), "store_dir", ns.StoreDir())
	}
	nc, err := o.conn.connect("natsroute-router", log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	defer nc.Close()

	rt, err := router.New(nc, o.cfg)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = rt.Start(startCtx)
	cancel()
	if err != nil {
		log.Error("cannot start the router", "err", err)
		return 1
	}
	var httpSrv *httpServer
	if o.httpAddr != "" {
		if httpSrv, err = startHTTP(o.httpAddr, nc, rt, m, log); err != nil {
			log.Error("cannot start HTTP", "err", err)
			_ = rt.Close()
			return 1
		}
	}
	try := `nats req route.request '{"key":"user-42"}'`
	if u := nc.ConnectedUrlRedacted(); u != nats.DefaultURL && u != "nats://localhost:4222" {
		try = fmt.Sprintf(`nats --server %s req route.request '{"key":"user-42"}'`, u)
	}
	log.Info("natsroute is serving", "nats", nc.ConnectedUrlRedacted(), "http", o.httpAddr, "try", try)

	<-ctx.Done()
	log.Info("signal received: draining")
	code := 0
	if err := rt.Close(); err != nil {
		log.Error("router close", "err", err)
		code = 1
	}
	if httpSrv != nil {
		httpSrv.close()
	}
	if err := nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		log.Warn("nats drain", "err", err)
	}
	return code
}
