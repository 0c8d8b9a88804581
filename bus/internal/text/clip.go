// Package text holds string helpers that bus and the router share.
package text

import "fmt"

// Clip shortens a string from the network for a log line or an error
// message: at most 64 bytes, then how long it was.
func Clip(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + fmt.Sprintf("...(%d bytes)", len(s))
	}
	return s
}
