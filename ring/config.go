package ring

import (
	"errors"
	"fmt"
)

const (
	// DefaultVirtualNodes is the number of points per unit of weight.
	DefaultVirtualNodes = 150

	// MaxVirtualNodes bounds Config.VirtualNodes.
	MaxVirtualNodes = 10_000

	// MaxWeight bounds a member's weight; with the default 150 virtual nodes
	// a member owns at most 150,000 points.
	MaxWeight = 1000.0

	// MaxIDLength bounds a member id in bytes.
	MaxIDLength = 256
)

// Config configures a Ring. The zero value is valid and means the defaults.
type Config struct {
	// VirtualNodes is the number of points a member of weight 1 owns.
	// 0 means DefaultVirtualNodes (150); at most MaxVirtualNodes.
	VirtualNodes int

	// hash replaces XXH64 in internal tests (forced collisions).
	hash func(string) uint64
}

// DefaultConfig returns the configuration with every default filled in.
func DefaultConfig() Config {
	return Config{VirtualNodes: DefaultVirtualNodes}
}

// Validate reports every problem with the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.VirtualNodes < 0 || c.VirtualNodes > MaxVirtualNodes {
		errs = append(errs, fmt.Errorf("ring: VirtualNodes = %d, want 0 (default %d) to %d", c.VirtualNodes, DefaultVirtualNodes, MaxVirtualNodes))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.VirtualNodes == 0 {
		c.VirtualNodes = DefaultVirtualNodes
	}
	return c
}
