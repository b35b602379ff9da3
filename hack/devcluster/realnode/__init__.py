"""Real nodes for the local cluster: a kubelet on its own containerd (runc, a CNI bridge) per
node, running the pods from images imported without a registry, beside the kwok nodes.
Facts this rests on (versions, the two fixes this VM kind needs): notes/real-kubelet.md of the
project's shared notes; the README's "Development cluster" section says how to use it."""
