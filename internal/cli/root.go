// Package cli holds the commands of the trellis command-line tool, one file per command. cmd/trellis only runs
// NewRootCommand.
package cli

import (
	"github.com/spf13/cobra"
)

// NewRootCommand returns the trellis command with every subcommand. The binary also works as the kubectl plugin
// kubectl-trellis: installed under that name on the PATH, it runs as `kubectl trellis ...`.
func NewRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "trellis",
		Short: "Trellis service mesh command-line tool",
		Long: `trellis manages and inspects a Trellis service mesh.

Installed on the PATH as kubectl-trellis, the same binary is a kubectl plugin: "kubectl trellis inject ..." runs
"trellis inject ...".`,
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.AddCommand(
		newCheckCommand(),
		newInjectCommand(),
		newVersionCommand(),
	)
	return root
}
