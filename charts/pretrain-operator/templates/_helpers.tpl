{{- define "pretrain-operator.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pretrain-operator.serviceAccountName" -}}
{{- default (include "pretrain-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "pretrain-operator.labels" -}}
app.kubernetes.io/name: pretrain-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
