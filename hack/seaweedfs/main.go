// weed, reduced to what the development object store runs: `weed mini` (a master, a volume
// server, a filer and the S3 gateway in one process) and the other subcommands of SeaweedFS's
// command package, logging to stderr, without weed's error reporting to Sentry or its web UI
// assets. SeaweedFS's own main package cannot be imported, and its go.mod has a replace
// directive, so `go install` of it is refused: this module repeats that directive.
package main

import (
	"fmt"
	"os"
	"testing/fstest"

	"github.com/seaweedfs/seaweedfs/weed/command"
	weed_server "github.com/seaweedfs/seaweedfs/weed/server"
	flag "github.com/seaweedfs/seaweedfs/weed/util/fla9"
	util_http "github.com/seaweedfs/seaweedfs/weed/util/http"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: weed COMMAND [FLAGS]")
		os.Exit(2)
	}
	_ = flag.Set("logtostderr", "true") // the log goes where the process's output goes
	weed_server.StaticFS = fstest.MapFS{}
	util_http.InitGlobalHttpClient()
	for _, cmd := range command.Commands {
		if cmd.Name() != os.Args[1] || cmd.Run == nil {
			continue
		}
		if err := cmd.Flag.Parse(os.Args[2:]); err != nil {
			os.Exit(2)
		}
		if !cmd.Run(cmd, cmd.Flag.Args()) {
			os.Exit(1)
		}
		os.Exit(command.CommandExitStatus())
	}
	fmt.Fprintf(os.Stderr, "weed: unknown command %q\n", os.Args[1])
	os.Exit(2)
}
