{{/*
The agent's config file (config.yaml of the ConfigMap): .Values.config verbatim when it is text
(--set-file config=pipeline.yaml), else the defaults built from the values with .Values.config
deep-merged over them (maps merge, lists and scalars replace). Reads only .Release and .Values.
*/}}
{{- define "otel-kepler.config" -}}
{{- if kindIs "string" .Values.config -}}
{{- .Values.config -}}
{{- else -}}
{{- include "otel-kepler.checkConfig" . -}}
{{- if ne .Values.mode "sidecar" -}}
# {{ include "otel-kepler.privilegeNote" . }}
{{ end -}}
{{- toYaml (mergeOverwrite (include "otel-kepler.defaultConfig" . | fromYaml) (deepCopy (.Values.config | default dict))) -}}
{{- end -}}
{{- end -}}

{{- define "otel-kepler.defaultConfig" -}}
{{- $v := .Values -}}
{{- $sidecar := eq $v.mode "sidecar" -}}
{{- $secrets := include "otel-kepler.secretsDir" . -}}
{{- $host := dict "node_name" "${env:NODE_NAME:-}" -}}
{{- $receivers := dict -}}
{{- $rlist := list -}}
{{- $processors := dict -}}
{{- $plist := list -}}
{{- $exporters := dict -}}
{{- $elist := list -}}

{{- /* receivers */ -}}
{{- if $sidecar -}}
{{- /* the pod's own /proc (shareProcessNamespace); RAPL where readable, else the model */ -}}
{{- $_ := set $receivers "rapl" (dict "fallback" "estimator") -}}
{{- $_ := set $receivers "procfs" (dict) -}}
{{- $rlist = list "rapl" "procfs" -}}
{{- else -}}
{{- $_ := set $host "procfs" "/host/proc" -}}
{{- $_ := set $host "sysfs" "/host/sys" -}}
{{- if eq (include "otel-kepler.privilege" .) "high" -}}
{{- $_ := set $receivers "rapl" (dict "fallback" "estimator") -}}
{{- $_ := set $receivers "ebpf" (dict "fallback" "procfs") -}}
{{- $rlist = list "rapl" "ebpf" -}}
{{- else -}}
{{- $_ := set $receivers "estimator" (dict) -}}
{{- $_ := set $receivers "procfs" (dict) -}}
{{- $rlist = list "estimator" "procfs" -}}
{{- end -}}
{{- end -}}
{{- if $v.ipmi.enabled -}}
{{- $ipmi := dict "port" $v.ipmi.port -}}
{{- if $v.ipmi.endpoint -}}
{{- $_ := set $ipmi "endpoint" $v.ipmi.endpoint -}}
{{- end -}}
{{- if $v.ipmi.username -}}
{{- $_ := set $ipmi "username" $v.ipmi.username -}}
{{- end -}}
{{- if $v.ipmi.passwordSecret.secretName -}}
{{- $_ := set $ipmi "password_file" (printf "%s/ipmi/%s" $secrets $v.ipmi.passwordSecret.key) -}}
{{- end -}}
{{- $_ := set $receivers "ipmi" (mergeOverwrite $ipmi (deepCopy $v.ipmi.settings)) -}}
{{- $rlist = append $rlist "ipmi" -}}
{{- end -}}
{{- if $v.gpu.enabled -}}
{{- $_ := set $receivers "nvml" (mergeOverwrite (dict "required" false) (deepCopy $v.gpu.settings)) -}}
{{- $rlist = append $rlist "nvml" -}}
{{- end -}}
{{- if $v.redfish.enabled -}}
{{- $redfish := dict "endpoint" $v.redfish.endpoint "auth" $v.redfish.auth "timeout" $v.redfish.timeout "poll_interval" $v.redfish.pollInterval "insecure_skip_verify" $v.redfish.insecureSkipVerify -}}
{{- if $v.redfish.username -}}
{{- $_ := set $redfish "username" $v.redfish.username -}}
{{- end -}}
{{- with include "otel-kepler.redfishPasswordSecret" . | fromJson -}}
{{- $_ := set $redfish "password_file" (printf "%s/redfish/%s" $secrets .key) -}}
{{- end -}}
{{- if $v.redfish.caFile -}}
{{- $_ := set $redfish "ca_file" (include "otel-kepler.tlsPath" (dict "file" $v.redfish.caFile "dir" (include "otel-kepler.redfishTlsDir" .))) -}}
{{- end -}}
{{- $_ := set $receivers "redfish" (mergeOverwrite $redfish (deepCopy $v.redfish.settings)) -}}
{{- $rlist = append $rlist "redfish" -}}
{{- end -}}
{{- range $name, $settings := $v.extraReceivers -}}
{{- $_ := set $receivers $name (default (dict) $settings) -}}
{{- $rlist = append $rlist $name -}}
{{- end -}}

{{- /* processors: names before attribution, carbon after it */ -}}
{{- if $v.k8sattributes.enabled -}}
{{- $k8s := dict -}}
{{- if $sidecar -}}
{{- $k8s = dict "source" "downward_api" -}}
{{- else if eq $v.k8sattributes.source "kubelet" -}}
{{- $kubelet := dict "endpoint" "https://${env:NODE_IP}:10250" "insecure_skip_verify" $v.k8sattributes.kubelet.insecureSkipVerify "poll_interval" $v.k8sattributes.kubelet.pollInterval -}}
{{- $k8s = dict "source" "kubelet" "kubelet" $kubelet -}}
{{- else -}}
{{- $k8s = dict "source" $v.k8sattributes.source -}}
{{- end -}}
{{- $_ := set $processors "k8sattributes" (mergeOverwrite $k8s (deepCopy $v.k8sattributes.settings)) -}}
{{- $plist = append $plist "k8sattributes" -}}
{{- end -}}
{{- $attribution := dict "levels" $v.levels -}}
{{- if $sidecar -}}
{{- /* /proc shows only this pod: its share is of the node's busy CPU time */ -}}
{{- $_ := set $attribution "share_of" "node" -}}
{{- end -}}
{{- $_ := set $processors "attribution" $attribution -}}
{{- $plist = append $plist "attribution" -}}
{{- if $v.carbon.enabled -}}
{{- $carbon := deepCopy $v.carbon.settings -}}
{{- if $v.carbon.electricityMapsToken.secretName -}}
{{- $em := default (dict) $carbon.electricitymaps -}}
{{- $_ := set $em "token_file" (printf "%s/electricitymaps/%s" $secrets $v.carbon.electricityMapsToken.key) -}}
{{- $_ := set $carbon "electricitymaps" $em -}}
{{- end -}}
{{- if $v.carbon.wattTimePassword.secretName -}}
{{- $wt := default (dict) $carbon.watttime -}}
{{- $_ := set $wt "password_file" (printf "%s/watttime/%s" $secrets $v.carbon.wattTimePassword.key) -}}
{{- $_ := set $carbon "watttime" $wt -}}
{{- end -}}
{{- $_ := set $processors "carbon" $carbon -}}
{{- $plist = append $plist "carbon" -}}
{{- end -}}

{{- /* exporters: the pull endpoint (probes, Prometheus), then OTLP */ -}}
{{- $_ := set $exporters "prometheus" (dict "endpoint" (printf "0.0.0.0:%s" (include "otel-kepler.port" .))) -}}
{{- $elist = append $elist "prometheus" -}}
{{- if $v.otlp.enabled -}}
{{- $otlp := dict "endpoint" $v.otlp.endpoint "compression" $v.otlp.compression "timeout" $v.otlp.timeout -}}
{{- if $v.otlp.headers -}}
{{- $headers := dict -}}
{{- range $name, $ref := $v.otlp.headers -}}
{{- $_ := set $headers (ternary (lower $name) $name (eq $v.otlp.protocol "grpc")) (printf "${env:%s}" (include "otel-kepler.headerEnv" $name)) -}}
{{- end -}}
{{- $_ := set $otlp "headers" $headers -}}
{{- end -}}
{{- $tls := dict -}}
{{- $dir := include "otel-kepler.otlpTlsDir" . -}}
{{- if kindIs "bool" $v.otlp.tls.insecure -}}
{{- $_ := set $tls "insecure" $v.otlp.tls.insecure -}}
{{- end -}}
{{- range $key, $file := dict "ca_file" $v.otlp.tls.caFile "cert_file" $v.otlp.tls.certFile "key_file" $v.otlp.tls.keyFile -}}
{{- if $file -}}
{{- $_ := set $tls $key (include "otel-kepler.tlsPath" (dict "file" $file "dir" $dir)) -}}
{{- end -}}
{{- end -}}
{{- if $tls -}}
{{- $_ := set $otlp "tls" $tls -}}
{{- end -}}
{{- $id := ternary "otlp" "otlphttp" (eq $v.otlp.protocol "grpc") -}}
{{- $_ := set $exporters $id $otlp -}}
{{- $elist = append $elist $id -}}
{{- end -}}
{{- range $name, $settings := $v.extraExporters -}}
{{- $_ := set $exporters $name (default (dict) $settings) -}}
{{- $elist = append $elist $name -}}
{{- end -}}

{{- $pipeline := dict "receivers" $rlist "processors" $plist "exporters" $elist -}}
{{- $service := dict "interval" $v.interval "pipelines" (dict "metrics" $pipeline) -}}
{{- toYaml (dict "host" $host "receivers" $receivers "processors" $processors "exporters" $exporters "service" $service) -}}
{{- end -}}
