package cli

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Version is the release of this build, set at link time with
// -ldflags "-X github.com/trellis-mesh/trellis/internal/cli.Version=v1.2.3". Default: "dev".
var Version = "dev"

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of this trellis binary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info, _ := debug.ReadBuildInfo()
			_, err := fmt.Fprintln(cmd.OutOrStdout(), versionString(Version, info))
			return err
		},
	}
}

// versionString describes the build: the release, and the commit and Go version when the build recorded them.
func versionString(version string, info *debug.BuildInfo) string {
	s := "trellis " + version
	if info == nil {
		return s
	}
	var revision, modified string
	for _, kv := range info.Settings {
		switch kv.Key {
		case "vcs.revision":
			revision = kv.Value
		case "vcs.modified":
			modified = kv.Value
		}
	}
	if revision != "" {
		if len(revision) > 12 {
			revision = revision[:12]
		}
		if modified == "true" {
			revision += "-dirty"
		}
		s += " (commit " + revision + ")"
	}
	if info.GoVersion != "" {
		s += " " + info.GoVersion
	}
	return s
}
