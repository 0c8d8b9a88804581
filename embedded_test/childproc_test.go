package embedded_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
)

// serveChild is the child's side of the benchmarks' line protocol: it says
// "ready", then answers each line of stdin with one line until stdin
// closes. "profile <path>" and "profile-stop" run a CPU profile; handle
// answers the other commands (ok false: no such command).
func serveChild(in io.Reader, out io.Writer, name string, handle func(cmd, arg string) (reply string, ok bool, err error)) error {
	var profile *os.File
	defer func() {
		if profile != nil {
			pprof.StopCPUProfile()
			profile.Close()
		}
	}()
	w := bufio.NewWriter(out)
	say := func(s string) error {
		if _, err := w.WriteString(s + "\n"); err != nil {
			return err
		}
		return w.Flush()
	}
	if err := say("ready"); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		reply := "ok"
		switch {
		case cmd == "profile" && arg != "" && profile == nil:
			var err error
			if profile, err = os.Create(arg); err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(profile); err != nil {
				return err
			}
		case cmd == "profile-stop" && profile != nil:
			pprof.StopCPUProfile()
			if err := profile.Close(); err != nil {
				return err
			}
			profile = nil
		default:
			r, ok, err := handle(cmd, arg)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%s: bad command %q", name, sc.Text())
			}
			reply = r
		}
		if err := say(reply); err != nil {
			return err
		}
	}
	return sc.Err()
}
