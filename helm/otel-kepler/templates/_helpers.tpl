{{/*
Helpers. Those used by the sidecar templates read only .Release and .Values, so that another
chart can call them with (dict "Release" .Release "Values" (index .Values "otel-kepler")).
*/}}

{{- define "otel-kepler.name" -}}
{{- default "otel-kepler" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "otel-kepler.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "otel-kepler.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "otel-kepler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otel-kepler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "otel-kepler.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "otel-kepler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: otel-kepler
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "otel-kepler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "otel-kepler.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, or repository@digest when image.digest is set (the tag is then only a label). */}}
{{- define "otel-kepler.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}
{{- end -}}

{{/* The metrics port: service.port (Kepler's key) when set, else port. The agent listens on it
and the Service exposes it. */}}
{{- define "otel-kepler.port" -}}
{{- int (.Values.service.port | default .Values.port) -}}
{{- end -}}

{{/* Where the agent finds its files in the container. */}}
{{- define "otel-kepler.configDir" -}}/etc/otel-kepler{{- end -}}
{{- define "otel-kepler.otlpTlsDir" -}}/etc/otel-kepler/tls/otlp{{- end -}}
{{- define "otel-kepler.secretsDir" -}}/etc/otel-kepler/secrets{{- end -}}

{{/* OTLP_HEADER_<NAME>: the variable that carries one OTLP header from its Secret. */}}
{{- define "otel-kepler.headerEnv" -}}
{{- printf "OTLP_HEADER_%s" (regexReplaceAll "[^A-Z0-9]" (upper .) "_") -}}
{{- end -}}

{{/* A TLS file value: an absolute path as is, else a key of the mounted Secret. */}}
{{- define "otel-kepler.tlsPath" -}}
{{- if hasPrefix "/" .file -}}
{{- .file -}}
{{- else -}}
{{- printf "%s/%s" .dir .file -}}
{{- end -}}
{{- end -}}

{{/* true when the in-band BMC (/dev/ipmi0) is used: a privileged container. */}}
{{- define "otel-kepler.ipmiInBand" -}}
{{- if and .Values.ipmi.enabled (not .Values.ipmi.endpoint) (ne .Values.mode "sidecar") -}}true{{- end -}}
{{- end -}}

{{- define "otel-kepler.resources" -}}
{{- if eq .Values.mode "sidecar" -}}
{{- toYaml .Values.sidecar.resources -}}
{{- else if .Values.resources -}}
{{- toYaml .Values.resources -}}
{{- else -}}
{{- toYaml (get .Values.defaultResources (include "otel-kepler.privilege" .)) -}}
{{- end -}}
{{- end -}}

{{/* The Redfish password's Secret as JSON {secretName, key}: the user's, or the one the chart
creates from redfish.password; {} when there is none. */}}
{{- define "otel-kepler.redfishPasswordSecret" -}}
{{- $r := .Values.redfish -}}
{{- if not $r.enabled -}}
{{- toJson dict -}}
{{- else if $r.password -}}
{{- toJson (dict "secretName" (include "otel-kepler.redfishSecretName" .) "key" "password") -}}
{{- else if $r.passwordSecret.secretName -}}
{{- toJson (dict "secretName" $r.passwordSecret.secretName "key" $r.passwordSecret.key) -}}
{{- else -}}
{{- toJson dict -}}
{{- end -}}
{{- end -}}

{{- define "otel-kepler.redfishSecretName" -}}
{{- .Values.redfish.name | default (printf "%s-redfish" (include "otel-kepler.fullname" .)) -}}
{{- end -}}

{{- define "otel-kepler.redfishTlsDir" -}}/etc/otel-kepler/tls/redfish{{- end -}}

{{/* The key of redfish.caSecretName the config names, or "" (caFile is a path in the image). */}}
{{- define "otel-kepler.redfishCaKey" -}}
{{- $r := .Values.redfish -}}
{{- if and $r.enabled $r.caSecretName $r.caFile (not (hasPrefix "/" $r.caFile)) -}}
{{- $r.caFile -}}
{{- end -}}
{{- end -}}
