package main

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startEmbedded starts a nats-server with JetStream in this process.
func startEmbedded(o *options, log *slog.Logger) (*server.Server, error) {
	opts := &server.Options{}
	if o.embeddedConfig != "" {
		var err error
		if opts, err = server.ProcessConfigFile(o.embeddedConfig); err != nil {
			return nil, fmt.Errorf("--embedded-config: %w", err)
		}
	}
	host, port, err := net.SplitHostPort(o.listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: %w", o.listen, err)
	}
	if o.embeddedConfig == "" || o.listenSet {
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: port: %w", o.listen, err)
		}
		opts.Host, opts.Port = host, p
	}
	opts.JetStream = true
	if opts.StoreDir == "" || o.storeDirSet {
		opts.StoreDir = o.storeDir
	}
	if opts.ServerName == "" {
		opts.ServerName = "natsroute-embedded"
	}
	opts.NoSigs = true
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	s.SetLoggerV2(&serverLog{log.With("component", "nats-server")}, opts.Debug, opts.Trace, false)
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats-server did not start on %s (is the port taken? use --listen)", o.listen)
	}
	return s, nil
}

// serverLog sends nats-server's logs to slog. Its notices (the start-up
// banner) are debug lines: the router logs its own summary. Fatal errors
// are logged as errors: the server shuts itself down, and the router
// notices.
type serverLog struct{ l *slog.Logger }

func (s *serverLog) Noticef(f string, v ...any) { s.l.Debug(fmt.Sprintf(f, v...)) }
func (s *serverLog) Warnf(f string, v ...any)   { s.l.Warn(fmt.Sprintf(f, v...)) }
func (s *serverLog) Fatalf(f string, v ...any)  { s.l.Error(fmt.Sprintf(f, v...)) }
func (s *serverLog) Errorf(f string, v ...any)  { s.l.Error(fmt.Sprintf(f, v...)) }
func (s *serverLog) Debugf(f string, v ...any)  { s.l.Debug(fmt.Sprintf(f, v...)) }
func (s *serverLog) Tracef(f string, v ...any)  { s.l.Debug(fmt.Sprintf(f, v...)) }
