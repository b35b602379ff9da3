// Command coredns is CoreDNS with only the plugins the local cluster's DNS needs:
// Service and pod names from the API server (kubernetes), plus errors, log,
// health, ready and cache. The stock build links every cloud provider's plugin
// and takes much longer to compile; plugins register themselves when imported,
// and Directives gives their order in a server block (as plugin.cfg would).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"bind", "health", "ready", "errors", "log", "cache", "kubernetes"}
}

func main() {
	coremain.Run()
}
