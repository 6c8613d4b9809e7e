"""A rehearsal of Metaflow's remote path for @torchrun flows, with only the cluster replaced.

``python flow.py run`` goes through Metaflow's own Kubernetes, Argo Workflows and
AWS Batch code: Metaflow builds the Job and JobSet manifests, the Argo workflow or
the Batch jobs, and uploads the code package to S3 (an S3-compatible test server).
Where Metaflow would talk to a cluster, a stand-in starts each pod's or node's
container command exactly as given, as a process in a test host of its own (a
network namespace) with the pod's hostname and an environment that has torch and
Metaflow but not metaflow-torchrun (see ``cluster``, ``pod_env`` and the
``*_standin`` modules).

What it cannot show: real scheduling (nodes arriving minutes apart, preemption,
quotas), cluster DNS and its timing (names resolve through hosts files), images and
their pulls, NetworkPolicies and security groups, and NCCL or GPUs (gloo on CPU).
"""
