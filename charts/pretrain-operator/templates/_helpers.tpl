{{- define "pretrain-operator.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pretrain-operator.serviceAccountName" -}}
{{- default (include "pretrain-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "pretrain-operator.labels" -}}
{{ include "pretrain-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pretrain-operator.selectorLabels" -}}
app.kubernetes.io/name: pretrain-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Everything the operator calls inside the namespaces it watches (tests run it with exactly
these rules, as the chart's ServiceAccount). */}}
{{- define "pretrain-operator.jobRules" -}}
# The jobs: watched, annotated by kopf (its bookkeeping), deleted after ttlSecondsAfterFinished.
- apiGroups: ["pretrain.dev"]
  resources: ["pretrainjobs", "finetunejobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["pretrain.dev"]
  resources: ["pretrainjobs/status", "finetunejobs/status"]
  verbs: ["get", "patch"]
# Node and rendezvous pods: watched through an index, created and replaced.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The config ConfigMap (patched when the spec changes) and the Services.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# A secretRef's Secret: is it there before pods that read it start (its data is never used).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# The budgets and the PodGroup: patched when spec.replicas changes.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch"]
- apiGroups: ["scheduling.x-k8s.io"]
  resources: ["podgroups"]
  verbs: ["create", "patch"]
# Kueue: a queued job's Workload (made, watched; its Finished condition set when it ends).
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads/status"]
  verbs: ["patch"]
{{- end -}}

{{/* Cluster-scoped in any mode: kopf discovers which resources exist as CRDs come and go. */}}
{{- define "pretrain-operator.discoveryRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
# Kueue's ResourceFlavors (the node labels and tolerations of an admitted job's flavors) and
# the priority classes a queued job's Workload takes its priority from.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["resourceflavors", "workloadpriorityclasses"]
  verbs: ["get"]
- apiGroups: ["scheduling.k8s.io"]
  resources: ["priorityclasses"]
  verbs: ["get"]
{{- end -}}
