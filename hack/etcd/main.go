// Command etcd is the etcd server of the local control plane, built from the Go
// module proxy (no prebuilt binaries can be downloaded on our machines).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
