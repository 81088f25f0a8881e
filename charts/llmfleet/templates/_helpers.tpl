{{/*
Names, labels and images shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "llmfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name if it already
contains the chart name, else "<release>-<chart>".
*/}}
{{- define "llmfleet.fullname" -}}
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

{{/*
"<fullname>-<suffix>", at most 63 characters (a Service name is a DNS label): the prefix
is shortened, never the suffix, so two objects never end up with one name.
Call with (list $ "suffix").
*/}}
{{- define "llmfleet.componentName" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- $prefix := include "llmfleet.fullname" $ctx | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix $suffix }}
{{- end }}

{{- define "llmfleet.operator.fullname" -}}
{{- include "llmfleet.componentName" (list . "operator") }}
{{- end }}

{{- define "llmfleet.ingress.fullname" -}}
{{- include "llmfleet.componentName" (list . "ingress") }}
{{- end }}

{{- define "llmfleet.ingress.bootstrapName" -}}
{{- include "llmfleet.componentName" (list . "ingress-bootstrap") }}
{{- end }}

{{- define "llmfleet.ingress.metricsName" -}}
{{- include "llmfleet.componentName" (list . "ingress-metrics") }}
{{- end }}

{{- define "llmfleet.test.fullname" -}}
{{- include "llmfleet.componentName" (list . "test") }}
{{- end }}

{{/* The operator's xDS address inside the cluster (its Service). */}}
{{- define "llmfleet.operator.xdsAddress" -}}
{{- printf "%s.%s.svc" (include "llmfleet.operator.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "llmfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of a component (operator, ingress, test): name, instance and component
only, so upgrades that change other labels never orphan pods. Call with (list $ "operator").
*/}}
{{- define "llmfleet.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "llmfleet.name" $ctx | quote }}
app.kubernetes.io/instance: {{ $ctx.Release.Name | quote }}
app.kubernetes.io/component: {{ index . 1 | quote }}
{{- end }}

{{/*
The operator treats every pod carrying this label as a model replica (an Envoy endpoint,
a scrape target); none of the chart's own pods may carry it.
*/}}
{{- define "llmfleet.reservedLabel" -}}
llmfleet.io/model-deployment
{{- end }}

{{/*
All labels of a component's objects: the standard ones, then commonLabels (a standard
label wins over a commonLabels entry with the same key). Call with (list $ "operator").
*/}}
{{- define "llmfleet.labels" -}}
{{- $ctx := index . 0 }}
{{- $labels := include "llmfleet.selectorLabels" . | fromYaml }}
{{- $_ := set $labels "helm.sh/chart" (include "llmfleet.chart" $ctx) }}
{{- $_ := set $labels "app.kubernetes.io/version" ($ctx.Chart.AppVersion | toString) }}
{{- $_ := set $labels "app.kubernetes.io/managed-by" $ctx.Release.Service }}
{{- if hasKey $ctx.Values.commonLabels (include "llmfleet.reservedLabel" $ctx) }}
{{- fail (printf "commonLabels must not set %s: the operator takes every pod with it for a model replica" (include "llmfleet.reservedLabel" $ctx)) }}
{{- end }}
{{- toYaml (merge $labels $ctx.Values.commonLabels) }}
{{- end }}

{{/*
Labels of a component's pods: its labels plus podLabels (which cannot replace the
selector labels). Call with (list $ "operator" .Values.operator.podLabels).
*/}}
{{- define "llmfleet.podLabels" -}}
{{- $ctx := index . 0 }}
{{- $podLabels := index . 2 | default dict }}
{{- if hasKey $podLabels (include "llmfleet.reservedLabel" $ctx) }}
{{- fail (printf "podLabels must not set %s: the operator takes every pod with it for a model replica" (include "llmfleet.reservedLabel" $ctx)) }}
{{- end }}
{{- $labels := include "llmfleet.labels" (list $ctx (index . 1)) | fromYaml }}
{{- toYaml (merge $labels $podLabels) }}
{{- end }}

{{/*
An image reference: "repository@digest" when a digest is set (it wins over the tag),
else "repository:tag", the tag defaulting to the second argument.
Call with (list .Values.image .Chart.AppVersion "image").
*/}}
{{- define "llmfleet.image" -}}
{{- $image := index . 0 }}
{{- $defaultTag := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- $tag := default $defaultTag $image.tag | toString }}
{{- if not $tag }}
{{- fail (printf "%s.tag or %s.digest must be set" (index . 2) (index . 2)) }}
{{- end }}
{{- printf "%s:%s" $image.repository $tag }}
{{- end }}
{{- end }}

{{/* ServiceAccount names: the given name, else the component name when created, else "default". */}}
{{- define "llmfleet.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "llmfleet.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llmfleet.ingress.serviceAccountName" -}}
{{- if .Values.ingress.serviceAccount.create }}
{{- default (include "llmfleet.ingress.fullname" .) .Values.ingress.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.ingress.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
A PodDisruptionBudget's budget: minAvailable or maxUnavailable, not both.
Call with (list .Values.operator.podDisruptionBudget "operator.podDisruptionBudget").
*/}}
{{- define "llmfleet.pdbBudget" -}}
{{- $pdb := index . 0 }}
{{- $where := index . 1 }}
{{- $min := $pdb.minAvailable }}
{{- $max := $pdb.maxUnavailable }}
{{- if and (not (kindIs "invalid" $min)) (not (kindIs "invalid" $max)) }}
{{- fail (printf "%s: set minAvailable or maxUnavailable, not both (set the other to null)" $where) }}
{{- else if not (kindIs "invalid" $min) -}}
minAvailable: {{ $min }}
{{- else if not (kindIs "invalid" $max) -}}
maxUnavailable: {{ $max }}
{{- else }}
{{- fail (printf "%s: set minAvailable or maxUnavailable" $where) }}
{{- end }}
{{- end }}

{{/*
An alert's labels: its severity, then metrics.prometheusRule.alertLabels (severity wins).
Call with (list "warning" .Values.metrics.prometheusRule.alertLabels).
*/}}
{{- define "llmfleet.alertLabels" -}}
{{- toYaml (merge (dict "severity" (index . 0)) (index . 1 | default dict)) }}
{{- end }}
