{{/*
Privilege and security contexts. Reads only .Release and .Values (the sidecar templates use it).

The privilege (high: root, eBPF and RAPL; low: non-root, procfs and the estimator) comes from
.Values.privilege when it is high or low, else (auto) from what the user's securityContext asks
for, the way Kepler's chart is driven:
  low:  runAsUser other than 0, runAsNonRoot true, or capabilities.drop ALL without add;
  high: runAsUser 0, any capabilities.add, or privileged true;
  neither: high (the default).
A request that asks for both, or contradicts an explicit privilege, fails with the keys at fault.

Kepler's chart takes one securityContext for everything; Kubernetes splits it: fsGroup and the
other pod-wide fields exist only in the pod's securityContext, capabilities and privileged only in
the container's. The user's securityContext is split accordingly; the identity (runAsUser,
runAsGroup, runAsNonRoot, seccompProfile, ...) is set once, on the pod (a sidecar, in somebody
else's pod, carries it on its container).
*/}}

{{- define "otel-kepler.podOnlyFields" -}}
fsGroup fsGroupChangePolicy supplementalGroups supplementalGroupsPolicy sysctls seLinuxChangePolicy
{{- end -}}
{{- define "otel-kepler.identityFields" -}}
runAsUser runAsGroup runAsNonRoot seccompProfile seLinuxOptions appArmorProfile windowsOptions
{{- end -}}

{{/* The user's capabilities with Kepler's spelling accepted: CAP_BPF and BPF both give BPF
(the runtime adds the CAP_ prefix itself: CAP_BPF would become CAP_CAP_BPF). JSON. */}}
{{- define "otel-kepler.userCapabilities" -}}
{{- $out := dict -}}
{{- range $kind, $names := (.Values.securityContext.capabilities | default dict) -}}
{{- $normal := list -}}
{{- range $names -}}
{{- $normal = append $normal (upper . | trimPrefix "CAP_") -}}
{{- end -}}
{{- $_ := set $out $kind $normal -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The privilege decision as JSON: {"privilege": "high"|"low", "reason": "..."}. */}}
{{- define "otel-kepler.privilegeDecision" -}}
{{- $v := .Values -}}
{{- if eq $v.mode "sidecar" -}}
{{- toJson (dict "privilege" "low" "reason" "mode=sidecar") -}}
{{- else -}}
{{- $sc := $v.securityContext | default dict -}}
{{- $psc := $v.podSecurityContext | default dict -}}
{{- $caps := include "otel-kepler.userCapabilities" . | fromJson -}}
{{- $adds := $caps.add | default list -}}
{{- $drops := $caps.drop | default list -}}
{{- $low := list -}}
{{- $high := list -}}
{{- $uidKey := "" -}}
{{- if hasKey $sc "runAsUser" -}}
{{- $uidKey = "securityContext.runAsUser" -}}
{{- else if hasKey $psc "runAsUser" -}}
{{- $uidKey = "podSecurityContext.runAsUser" -}}
{{- end -}}
{{- if $uidKey -}}
{{- $uid := ternary $sc.runAsUser $psc.runAsUser (hasKey $sc "runAsUser") -}}
{{- if kindIs "invalid" $uid -}}
{{- else if eq (int64 $uid) 0 -}}
{{- $high = append $high (printf "%s=0" $uidKey) -}}
{{- else -}}
{{- $low = append $low (printf "%s=%d" $uidKey (int64 $uid)) -}}
{{- end -}}
{{- end -}}
{{- if or $sc.runAsNonRoot $psc.runAsNonRoot -}}
{{- $low = append $low "runAsNonRoot=true" -}}
{{- end -}}
{{- if $adds -}}
{{- $high = append $high (printf "securityContext.capabilities.add=[%s]" (join "," $adds)) -}}
{{- else if has "ALL" $drops -}}
{{- $low = append $low "securityContext.capabilities.drop=[ALL] without add" -}}
{{- end -}}
{{- if $sc.privileged -}}
{{- $high = append $high "securityContext.privileged=true" -}}
{{- end -}}
{{- if and $low $high -}}
{{- fail (printf "securityContext asks for both privileges: %s (privilege low: a non-root agent without capabilities) and %s (privilege high: root with BPF, SYS_ADMIN and NET_ADMIN); keep the keys of one of them" (join ", " $low) (join ", " $high)) -}}
{{- end -}}
{{- if and (eq $v.privilege "high") $low -}}
{{- fail (printf "privilege=high, but %s asks for privilege low: remove %s, or set privilege=low" (join ", " $low) (ternary "it" "them" (eq (len $low) 1))) -}}
{{- end -}}
{{- if and (eq $v.privilege "low") $high -}}
{{- fail (printf "privilege=low, but %s asks for privilege high: remove %s, or set privilege=high" (join ", " $high) (ternary "it" "them" (eq (len $high) 1))) -}}
{{- end -}}
{{- if ne $v.privilege "auto" -}}
{{- toJson (dict "privilege" $v.privilege "reason" (printf "privilege=%s" $v.privilege)) -}}
{{- else if $low -}}
{{- toJson (dict "privilege" "low" "reason" (join ", " $low)) -}}
{{- else if $high -}}
{{- toJson (dict "privilege" "high" "reason" (join ", " $high)) -}}
{{- else -}}
{{- toJson (dict "privilege" "high" "reason" "the chart's default") -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* high or low: the privilege the agent runs with. */}}
{{- define "otel-kepler.privilege" -}}
{{- (include "otel-kepler.privilegeDecision" . | fromJson).privilege -}}
{{- end -}}

{{/* One line for the pod's log (and the ConfigMap's header): the privilege, why, and what it
runs and leaves off. */}}
{{- define "otel-kepler.privilegeNote" -}}
{{- $d := include "otel-kepler.privilegeDecision" . | fromJson -}}
{{- if eq $d.privilege "high" -}}
{{- printf "otel-kepler: privilege high (%s): root with capabilities %s; receivers rapl (measured energy, the estimator where a node has no RAPL) and ebpf (CPU time from the scheduler, procfs where BPF cannot load). otel-kepler doctor tells what each source lacks on this node." $d.reason (join ", " (include "otel-kepler.containerCapabilities" . | fromJson).add) -}}
{{- else -}}
{{- $pid := ternary "with hostPID" "no hostPID" (eq (include "otel-kepler.hostPID" .) "true") -}}
{{- printf "otel-kepler: privilege low (%s): receivers procfs (the host's /proc mounted at /host/proc, %s) and estimator (modelled power, source=model); rapl is off because energy_uj is readable by root only, ebpf because loading BPF needs root with CAP_BPF and CAP_SYS_ADMIN. otel-kepler doctor tells what each source lacks on this node." $d.reason $pid -}}
{{- end -}}
{{- end -}}

{{- define "otel-kepler.hostPID" -}}
{{- if kindIs "bool" .Values.hostPID -}}
{{- .Values.hostPID -}}
{{- else -}}
{{- eq (include "otel-kepler.privilege" .) "high" -}}
{{- end -}}
{{- end -}}

{{/* The identity part of the user's values: podSecurityContext, then securityContext (which
Kubernetes would let win, being the container's). JSON. */}}
{{- define "otel-kepler.userIdentity" -}}
{{- $fields := splitList " " (include "otel-kepler.identityFields" .) -}}
{{- $out := dict -}}
{{- range $source := list (.Values.podSecurityContext | default dict) (.Values.securityContext | default dict) -}}
{{- range $key, $value := $source -}}
{{- if has $key $fields -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{- define "otel-kepler.defaultIdentity" -}}
{{- if eq (include "otel-kepler.privilege" .) "high" -}}
{{- toJson (dict "runAsUser" 0 "runAsGroup" 0) -}}
{{- else -}}
{{- toJson (dict "runAsUser" 1000 "runAsGroup" 1000 "runAsNonRoot" true "seccompProfile" (dict "type" "RuntimeDefault")) -}}
{{- end -}}
{{- end -}}

{{/* The pod's securityContext in a DaemonSet: identity and fsGroup (the privilege's, the user's
over them) and the pod-wide fields of both securityContext and podSecurityContext. */}}
{{- define "otel-kepler.podSecurityContext" -}}
{{- $high := eq (include "otel-kepler.privilege" .) "high" -}}
{{- $sc := include "otel-kepler.defaultIdentity" . | fromJson -}}
{{- $_ := set $sc "fsGroup" (ternary 0 1000 $high) -}}
{{- $podFields := splitList " " (include "otel-kepler.podOnlyFields" .) -}}
{{- $user := include "otel-kepler.userIdentity" . | fromJson -}}
{{- range $source := list (.Values.podSecurityContext | default dict) (.Values.securityContext | default dict) -}}
{{- range $key, $value := $source -}}
{{- if has $key $podFields -}}
{{- $_ := set $user $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml (mergeOverwrite $sc $user) -}}
{{- end -}}

{{/* The capabilities the agent container gets: {drop: [ALL], add: [...]} per privilege, the
user's lists (Kepler's CAP_ spelling accepted) in place of the privilege's. JSON. */}}
{{- define "otel-kepler.containerCapabilities" -}}
{{- $caps := dict "drop" (list "ALL") -}}
{{- if and (ne .Values.mode "sidecar") (eq (include "otel-kepler.privilege" .) "high") -}}
{{- $_ := set $caps "add" (list "BPF" "SYS_ADMIN" "NET_ADMIN") -}}
{{- end -}}
{{- toJson (mergeOverwrite $caps (include "otel-kepler.userCapabilities" . | fromJson)) -}}
{{- end -}}

{{/* The agent container's securityContext: what only a container has (capabilities,
privileged, ...); a sidecar adds the identity, never fsGroup. */}}
{{- define "otel-kepler.securityContext" -}}
{{- $sidecar := eq .Values.mode "sidecar" -}}
{{- $high := and (not $sidecar) (eq (include "otel-kepler.privilege" .) "high") -}}
{{- $sc := dict "privileged" false "readOnlyRootFilesystem" true -}}
{{- if not $high -}}
{{- $_ := set $sc "allowPrivilegeEscalation" false -}}
{{- end -}}
{{- if include "otel-kepler.ipmiInBand" . -}}
{{- $_ := set $sc "privileged" true -}}
{{- end -}}
{{- $skip := splitList " " (printf "%s %s" (include "otel-kepler.podOnlyFields" .) (include "otel-kepler.identityFields" .)) -}}
{{- range $key, $value := (.Values.securityContext | default dict) -}}
{{- if not (has $key $skip) -}}
{{- $_ := set $sc $key $value -}}
{{- end -}}
{{- end -}}
{{- $_ := set $sc "capabilities" (include "otel-kepler.containerCapabilities" . | fromJson) -}}
{{- if $sidecar -}}
{{- $sc = mergeOverwrite (include "otel-kepler.defaultIdentity" . | fromJson) (include "otel-kepler.userIdentity" . | fromJson) $sc -}}
{{- end -}}
{{- toYaml $sc -}}
{{- end -}}
