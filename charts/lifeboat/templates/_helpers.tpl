{{/* Resource names: the release name, suffixed with the chart name unless it already contains it. */}}
{{- define "lifeboat.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lifeboat.webhookService" -}}
{{- printf "%s-webhook" (include "lifeboat.fullname" .) -}}
{{- end -}}

{{- define "lifeboat.tlsSecret" -}}
{{- printf "%s-webhook-tls" (include "lifeboat.fullname" .) -}}
{{- end -}}

{{- define "lifeboat.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "lifeboat.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lifeboat.labels" -}}
{{ include "lifeboat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Namespaces where the operator may read Secrets (see values.yaml: secretNamespaces). */}}
{{- define "lifeboat.secretNamespaces" -}}
{{- toYaml (.Values.secretNamespaces | default .Values.watchNamespaces) -}}
{{- end -}}

{{/* The webhooks' namespaceSelector: never kube-system nor the operator's own namespace. */}}
{{- define "lifeboat.namespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      {{- toYaml (append .Values.webhook.excludeNamespaces .Release.Namespace | uniq) | nindent 6 }}
  {{- with .Values.watchNamespaces }}
  - key: kubernetes.io/metadata.name
    operator: In
    values:
      {{- toYaml . | nindent 6 }}
  {{- end }}
{{- end -}}

{{/* The chart's own webhook CA (cert-manager mode without an issuerRef). */}}
{{- define "lifeboat.caCertificate" -}}
{{- printf "%s-webhook-ca" (include "lifeboat.fullname" .) -}}
{{- end -}}

{{/* cert-manager's CA injector fills the webhooks' caBundle: from the chart's CA Certificate, or, with an
issuerRef, from the serving Certificate's ca.crt (the issuer's CA). */}}
{{- define "lifeboat.webhookClientAnnotations" -}}
{{- if .Values.webhook.certManager.enabled -}}
{{- $source := ternary (include "lifeboat.tlsSecret" .) (include "lifeboat.caCertificate" .) (not (empty .Values.webhook.certManager.issuerRef)) -}}
annotations:
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace $source }}
{{- end -}}
{{- end -}}
