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
{{- end -}}

{{- define "otel-kepler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "otel-kepler.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "otel-kepler.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
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

{{- define "otel-kepler.hostPID" -}}
{{- if kindIs "bool" .Values.hostPID -}}
{{- .Values.hostPID -}}
{{- else -}}
{{- eq .Values.privilege "high" -}}
{{- end -}}
{{- end -}}

{{/* The pod's securityContext in a DaemonSet: the privilege's, merged with .Values.podSecurityContext. */}}
{{- define "otel-kepler.podSecurityContext" -}}
{{- $sc := dict -}}
{{- if eq .Values.privilege "high" -}}
{{- $sc = dict "runAsUser" 0 "runAsGroup" 0 "fsGroup" 0 -}}
{{- else -}}
{{- $sc = dict "runAsUser" 1000 "runAsGroup" 1000 "fsGroup" 1000 "runAsNonRoot" true "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- end -}}
{{- toYaml (mergeOverwrite $sc (deepCopy .Values.podSecurityContext)) -}}
{{- end -}}

{{/* The agent container's securityContext, per privilege (a sidecar: low, without fsGroup). */}}
{{- define "otel-kepler.securityContext" -}}
{{- $sc := dict -}}
{{- if and (ne .Values.mode "sidecar") (eq .Values.privilege "high") -}}
{{- $caps := dict "drop" (list "ALL") "add" (list "BPF" "SYS_ADMIN" "NET_ADMIN") -}}
{{- $sc = dict "runAsUser" 0 "runAsGroup" 0 "runAsNonRoot" false "privileged" false "readOnlyRootFilesystem" true "capabilities" $caps -}}
{{- if include "otel-kepler.ipmiInBand" . -}}
{{- $_ := set $sc "privileged" true -}}
{{- end -}}
{{- else -}}
{{- $caps := dict "drop" (list "ALL") -}}
{{- $sc = dict "runAsUser" 1000 "runAsGroup" 1000 "runAsNonRoot" true "privileged" false "allowPrivilegeEscalation" false "readOnlyRootFilesystem" true "capabilities" $caps "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- end -}}
{{- toYaml (mergeOverwrite $sc (deepCopy .Values.securityContext)) -}}
{{- end -}}

{{- define "otel-kepler.resources" -}}
{{- if eq .Values.mode "sidecar" -}}
{{- toYaml .Values.sidecar.resources -}}
{{- else if .Values.resources -}}
{{- toYaml .Values.resources -}}
{{- else -}}
{{- toYaml (get .Values.defaultResources .Values.privilege) -}}
{{- end -}}
{{- end -}}
