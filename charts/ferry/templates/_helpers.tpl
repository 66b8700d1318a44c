{{/* Names ------------------------------------------------------------------------------------------ */}}

{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>" when the release name contains the chart name, else "<release>-<chart>"; 63 chars at most. */}}
{{- define "ferry.fullname" -}}
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

{{- define "ferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ferry.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "ferry.webhookServiceName" -}}
{{- printf "%s-webhook" (include "ferry.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "ferry.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "ferry.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------------------- */}}

{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "ferry.labels" -}}
helm.sh/chart: {{ include "ferry.chart" . }}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ferry
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* RBAC ------------------------------------------------------------------------------------------- */}}

{{/* The task kinds the operator serves (plural resource names of group ferry.dev). */}}
{{- define "ferry.taskResources" -}}
["dataaccesstasks", "obsdumptasks", "obsrestoretasks", "topicsyncs"]
{{- end }}

{{- define "ferry.taskStatusResources" -}}
["dataaccesstasks/status", "obsdumptasks/status", "obsrestoretasks/status", "topicsyncs/status"]
{{- end }}

{{- define "ferry.taskScaleResources" -}}
["dataaccesstasks/scale", "topicsyncs/scale"]
{{- end }}

{{/*
What the operator needs in each namespace it serves: a ClusterRole's rules without --namespace, a Role's in
each watched namespace with it. No wildcards, no escalate/bind/impersonate: the worker Roles the operator
creates grant only what these rules hold (get/patch on one task's status), which RBAC allows.
*/}}
{{- define "ferry.namespacedRules" -}}
# The task kinds: Kopf lists and watches them and patches them (its finalizer, progress and last-handled
# annotations).
- apiGroups: ["ferry.dev"]
  resources: {{ include "ferry.taskResources" . }}
  verbs: ["get", "list", "watch", "patch", "update"]
# Their status: the operator writes state, reason, conditions and the workers' summary; holding get and
# patch lets it grant its workers get/patch on their own task's status.
- apiGroups: ["ferry.dev"]
  resources: {{ include "ferry.taskStatusResources" . }}
  verbs: ["get", "patch", "update"]
# Events on the tasks (Created, Paused, Failed, Terminating...): kopf.event creates core/v1 Events;
# patch lets a client bump the count of a repeated Event instead of creating another.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
# The same Events through the events.k8s.io/v1 API, for clients of the operator that post there.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# One worker Deployment per task: read, created, patched (spec changes, pause = replicas 0) and deleted
# when the task is deleted.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# One Job per one-shot task (ObsRestoreTask): read, created, and deleted when the task is paused or deleted.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The worker pods, listed by the task's labels to report whether workers run.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Only get, by name: the operator checks that each Secret a task references exists and has the keys it
# names, to report a missing key in the status. It never copies values into status, Events or logs, and
# cannot list or watch Secrets. The workers read their Secrets as env vars set by the kubelet.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Per task, the workers' ServiceAccount (named like the worker Deployment, owned by the task so it is
# deleted with it).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Per task, the workers' Role and RoleBinding (same name and owner): the Role allows get/patch on that one
# task's status (resourceNames), which the rules above hold, so no escalate or bind is needed.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}

{{/* What the operator needs cluster-wide, whatever it watches. */}}
{{- define "ferry.clusterRules" -}}
# Kopf reads the CustomResourceDefinitions to find the kinds it serves and their versions.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# Kopf lists and watches namespaces to follow which of them exist.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/*
With --namespace, the checks across tasks still see every task of a kind (TopicSync's replication-loop
detection, per-instance limits): the operator lists them cluster-wide, read-only.
*/}}
{{- define "ferry.peerRules" -}}
# Cross-task checks (TopicSync replication loops, per-instance limits) list every task of a kind, in every
# namespace; list only, no get, watch or write outside the watched namespaces.
- apiGroups: ["ferry.dev"]
  resources: {{ include "ferry.taskResources" . }}
  verbs: ["list"]
{{- end }}
