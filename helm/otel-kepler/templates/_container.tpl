{{/*
The agent container and its volumes: one definition for the DaemonSet and for sidecars.
These read only .Release and .Values. Another chart that has otel-kepler as a dependency
(with mode: sidecar) adds the agent to its pod spec with:

  shareProcessNamespace: true
  containers:
    {{- include "otel-kepler.sidecar.container" (dict "Release" .Release "Values" (index .Values "otel-kepler")) | nindent 4 }}
  volumes:
    {{- include "otel-kepler.sidecar.volumes" (dict "Release" .Release "Values" (index .Values "otel-kepler")) | nindent 4 }}

and, to restart its pods when the config changes, this pod annotation:

  checksum/otel-kepler: {{ include "otel-kepler.configChecksum" (dict "Release" .Release "Values" (index .Values "otel-kepler")) }}
*/}}

{{- define "otel-kepler.sidecar.container" -}}
{{ include "otel-kepler.container" . }}
{{- end -}}

{{- define "otel-kepler.sidecar.volumes" -}}
{{ include "otel-kepler.volumes" . }}
{{- end -}}

{{- define "otel-kepler.configChecksum" -}}
{{- include "otel-kepler.config" . | sha256sum -}}
{{- end -}}

{{- define "otel-kepler.env" -}}
{{- $v := .Values -}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
- name: NODE_IP
  valueFrom: {fieldRef: {fieldPath: status.hostIP}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: POD_UID
  valueFrom: {fieldRef: {fieldPath: metadata.uid}}
- name: PYTHONUNBUFFERED
  value: "1"
- name: STATE_DIRECTORY
  value: /var/lib/otel-kepler
{{- if $v.otlp.enabled }}
{{- range $name, $ref := $v.otlp.headers }}
- name: {{ include "otel-kepler.headerEnv" $name }}
  valueFrom:
    secretKeyRef: {name: {{ $ref.secretName | quote }}, key: {{ $ref.key | quote }}}
{{- end }}
{{- end }}
{{- if $v.gpu.enabled }}
- name: NVIDIA_VISIBLE_DEVICES
  value: all
- name: NVIDIA_DRIVER_CAPABILITIES
  value: utility
{{- end }}
{{- if ne $v.mode "sidecar" }}
- name: OTEL_KEPLER_PRIVILEGE_NOTE
  value: {{ include "otel-kepler.privilegeNote" . | quote }}
{{- end }}
{{- range $name, $value := $v.extraEnvVars }}
- name: {{ $name | quote }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "otel-kepler.container" -}}
{{- $v := .Values -}}
{{- $daemonset := ne $v.mode "sidecar" -}}
{{- $secrets := include "otel-kepler.secretsDir" . -}}
- name: otel-kepler
  image: {{ include "otel-kepler.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $daemonset }}
  # The first line of the log says which privilege the agent has, why, and what it runs.
  command: [/bin/sh, -c, 'echo "$OTEL_KEPLER_PRIVILEGE_NOTE" >&2; exec otel-kepler "$@"', otel-kepler]
  {{- else }}
  command: [otel-kepler]
  {{- end }}
  args: [run, --config, {{ include "otel-kepler.configDir" . }}/config.yaml]
  ports:
    - name: kepler-metrics
      containerPort: {{ include "otel-kepler.port" . }}
      protocol: TCP
  env:
    {{- include "otel-kepler.env" . | nindent 4 }}
  {{- with $v.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- include "otel-kepler.resources" . | nindent 4 }}
  securityContext:
    {{- include "otel-kepler.securityContext" . | nindent 4 }}
  volumeMounts:
    - name: otel-kepler-config
      mountPath: {{ include "otel-kepler.configDir" . }}
      readOnly: true
    - name: otel-kepler-tmp
      mountPath: /tmp
    - name: otel-kepler-state
      mountPath: /var/lib/otel-kepler
    {{- if include "otel-kepler.otlpTlsKeys" . | fromJsonArray }}
    - name: otel-kepler-otlp-tls
      mountPath: {{ include "otel-kepler.otlpTlsDir" . }}
      readOnly: true
    {{- end }}
    {{- if and $v.ipmi.enabled $v.ipmi.passwordSecret.secretName }}
    - name: otel-kepler-ipmi
      mountPath: {{ $secrets }}/ipmi
      readOnly: true
    {{- end }}
    {{- if include "otel-kepler.redfishPasswordSecret" . | fromJson }}
    - name: otel-kepler-redfish
      mountPath: {{ $secrets }}/redfish
      readOnly: true
    {{- end }}
    {{- if include "otel-kepler.redfishCaKey" . }}
    - name: otel-kepler-redfish-tls
      mountPath: {{ include "otel-kepler.redfishTlsDir" . }}
      readOnly: true
    {{- end }}
    {{- if and $v.carbon.enabled $v.carbon.electricityMapsToken.secretName }}
    - name: otel-kepler-electricitymaps
      mountPath: {{ $secrets }}/electricitymaps
      readOnly: true
    {{- end }}
    {{- if and $v.carbon.enabled $v.carbon.wattTimePassword.secretName }}
    - name: otel-kepler-watttime
      mountPath: {{ $secrets }}/watttime
      readOnly: true
    {{- end }}
    {{- if $daemonset }}
    - name: host-proc
      mountPath: /host/proc
      readOnly: true
    - name: host-sys
      mountPath: /host/sys
      readOnly: true
    {{- if eq (include "otel-kepler.privilege" .) "high" }}
    - name: host-debugfs
      mountPath: /sys/kernel/debug
      readOnly: true
    - name: host-modules
      mountPath: /lib/modules
      readOnly: true
    {{- if $v.hostPaths.usrSrc }}
    - name: host-usr-src
      mountPath: /usr/src
      readOnly: true
    {{- end }}
    {{- end }}
    {{- if include "otel-kepler.ipmiInBand" . }}
    - name: host-ipmi
      mountPath: /dev/ipmi0
    {{- end }}
    {{- end }}
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The keys of the OTLP TLS Secret the config names (files given as absolute paths are not). */}}
{{- define "otel-kepler.otlpTlsKeys" -}}
{{- $keys := list -}}
{{- if and .Values.otlp.enabled .Values.otlp.tls.secretName -}}
{{- range $file := list .Values.otlp.tls.caFile .Values.otlp.tls.certFile .Values.otlp.tls.keyFile -}}
{{- if and $file (not (hasPrefix "/" $file)) -}}
{{- $keys = append $keys $file -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $keys -}}
{{- end -}}

{{- define "otel-kepler.secretVolume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ .ref.secretName | quote }}
    items:
      - {key: {{ .ref.key | quote }}, path: {{ .ref.key | quote }}}
    defaultMode: 0440
{{- end -}}

{{- define "otel-kepler.volumes" -}}
{{- $v := .Values -}}
- name: otel-kepler-config
  configMap:
    name: {{ include "otel-kepler.fullname" . }}
- name: otel-kepler-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if and $v.hostPaths.state (ne $v.mode "sidecar") (eq (include "otel-kepler.privilege" .) "high") }}
- name: otel-kepler-state
  hostPath: {path: {{ $v.hostPaths.state | quote }}, type: DirectoryOrCreate}
{{- else }}
- name: otel-kepler-state
  emptyDir:
    sizeLimit: 1Mi
{{- end }}
{{- with include "otel-kepler.otlpTlsKeys" . | fromJsonArray }}
- name: otel-kepler-otlp-tls
  secret:
    secretName: {{ $v.otlp.tls.secretName | quote }}
    items:
      {{- range $key := . }}
      - {key: {{ $key | quote }}, path: {{ $key | quote }}}
      {{- end }}
    defaultMode: 0440
{{- end }}
{{- if and $v.ipmi.enabled $v.ipmi.passwordSecret.secretName }}
{{ include "otel-kepler.secretVolume" (dict "name" "otel-kepler-ipmi" "ref" $v.ipmi.passwordSecret) }}
{{- end }}
{{- with include "otel-kepler.redfishPasswordSecret" . | fromJson }}
{{ include "otel-kepler.secretVolume" (dict "name" "otel-kepler-redfish" "ref" .) }}
{{- end }}
{{- with include "otel-kepler.redfishCaKey" . }}
{{ include "otel-kepler.secretVolume" (dict "name" "otel-kepler-redfish-tls" "ref" (dict "secretName" $v.redfish.caSecretName "key" .)) }}
{{- end }}
{{- if and $v.carbon.enabled $v.carbon.electricityMapsToken.secretName }}
{{ include "otel-kepler.secretVolume" (dict "name" "otel-kepler-electricitymaps" "ref" $v.carbon.electricityMapsToken) }}
{{- end }}
{{- if and $v.carbon.enabled $v.carbon.wattTimePassword.secretName }}
{{ include "otel-kepler.secretVolume" (dict "name" "otel-kepler-watttime" "ref" $v.carbon.wattTimePassword) }}
{{- end }}
{{- if ne $v.mode "sidecar" }}
- name: host-proc
  hostPath: {path: {{ $v.hostPaths.proc | quote }}, type: Directory}
- name: host-sys
  hostPath: {path: {{ $v.hostPaths.sys | quote }}, type: Directory}
{{- if eq (include "otel-kepler.privilege" .) "high" }}
- name: host-debugfs
  hostPath: {path: {{ $v.hostPaths.debugfs | quote }}, type: Directory}
- name: host-modules
  hostPath: {path: {{ $v.hostPaths.modules | quote }}, type: Directory}
{{- if $v.hostPaths.usrSrc }}
- name: host-usr-src
  hostPath: {path: {{ $v.hostPaths.usrSrc | quote }}, type: Directory}
{{- end }}
{{- end }}
{{- if include "otel-kepler.ipmiInBand" . }}
- name: host-ipmi
  hostPath: {path: /dev/ipmi0, type: CharDevice}
{{- end }}
{{- end }}
{{- with $v.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}
