{{/* Chart name, overridable so two charts of the same name can coexist. */}}
{{- define "privatellm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of every object of the release. The release name alone when it already
says "privatellm" (helm install privatellm ...), so names stay short and
predictable; otherwise "<release>-privatellm". 63 characters is the DNS label
limit that object names and label values share.
*/}}
{{- define "privatellm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "privatellm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels must never change after install: Deployment selectors are immutable. */}}
{{- define "privatellm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "privatellm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's Pods carry these. The NetworkPolicies it renders admit it to the
gateways' peer port and the autoscaled models' servers by two of them,
app.kubernetes.io/component=operator and app.kubernetes.io/part-of=privatellm
(render/meta.py operator_pods): keep both, whatever the release is called.
*/}}
{{- define "privatellm.labels" -}}
helm.sh/chart: {{ include "privatellm.chart" . }}
{{ include "privatellm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: privatellm
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "privatellm.serviceAccountName" -}}
{{- default (include "privatellm.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/*
The data plane's image: gateway.image where set, else the operator's own, so that a
mirror of the operator's image serves the gateways too.
*/}}
{{- define "privatellm.gatewayImage" -}}
{{- $repository := .Values.gateway.image.repository | default .Values.image.repository }}
{{- $tag := .Values.gateway.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/* Whether a CA source (vault.ca, gateway.oidc.ca) names an object. */}}
{{- define "privatellm.hasCA" -}}
{{- if or .secretName .configMapName }}true{{ end }}
{{- end }}

{{/* A volume holding a CA source's certificate as ca.crt. */}}
{{- define "privatellm.caVolume" -}}
{{- if .secretName -}}
secret:
  secretName: {{ .secretName }}
  items:
    - key: {{ .key | quote }}
      path: ca.crt
{{- else -}}
configMap:
  name: {{ .configMapName }}
  items:
    - key: {{ .key | quote }}
      path: ca.crt
{{- end }}
{{- end }}
