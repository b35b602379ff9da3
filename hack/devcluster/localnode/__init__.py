"""A local node: a kubelet stand-in that runs the pods bound to its Node as processes on this
machine, each pod in a network namespace of its own (a pod IP on a shared bridge) and a mount
namespace whose /etc/hosts resolves cluster DNS names. Development tooling, not product.

Pure translation (pod -> process) lives in `podspec`, `dns` and `podstatus`; the I/O in
`network` (namespaces), `sandbox` (what runs inside them), `runtime` (processes of one pod),
`kubeletapi` (logs for `kubectl logs`) and `agent` (the Node and its pods).
"""
