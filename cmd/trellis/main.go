// Command trellis is the Trellis command-line tool, also usable as the kubectl plugin kubectl-trellis. The commands
// live in internal/cli.
package main

import (
	"os"

	"github.com/trellis-mesh/trellis/internal/cli"
)

func main() {
	if err := cli.NewRootCommand().Execute(); err != nil {
		os.Exit(1)
	}
}
