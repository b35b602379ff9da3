// Command pause is the sandbox process of the local nodes' pods (the "pause"
// container that holds a pod's namespaces): it sleeps until SIGTERM or SIGINT
// and, as PID 1 of a pod that shares its process namespace, reaps orphans.
// Built statically from source, since no registry serves registry.k8s.io/pause.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for received := range signals {
		if received != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
